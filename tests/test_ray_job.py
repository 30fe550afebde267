"""`ray job submit` of an entry point against a real `ray start --head` on 127.0.0.1.

Its own module, so test_ray.py's cluster is stopped and disconnected before this head starts
(with a driver still connected elsewhere, the head's job agent did not come up here)."""

from __future__ import annotations

import os

import mlflow


def test_ray_job_submit_trains_on_two_workers_of_a_ray_head(demo_store, tmp_path):
    import json
    import subprocess
    import sys
    import time
    from pathlib import Path

    from servers import ray_head

    result, cfg = demo_store
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    env = dict(os.environ, HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # an active venv
    env.pop("RAY_ADDRESS", None)
    repo = Path(__file__).resolve().parents[1]
    overrides = ("train.backend=ray train.workers=2 train.cpus_per_worker=1 train.epochs=1 "
                 "model.latent_dim=4 "
                 "model.widths=[8,8] download.limit=300 tracking.experiment=test "
                 f"tracking.cache_dir={tmp_path / 'cache'}")
    with ray_head(env) as head:
        url = head["dashboard"]
        runtime = {"env_vars": {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
                                "HOME": str(home)}}
        for _ in range(10):  # the head's job agent comes up a little after its HTTP server
            done = subprocess.run(
                [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", url,
                 "--working-dir", str(repo), "--runtime-env-json", json.dumps(runtime), "--",
                 "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
                 "--experiment-name", "test", "-P", f"overrides={overrides}"],
                env=env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in done.stderr + done.stdout:
                break
            time.sleep(3)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    runs = mlflow.search_runs(experiment_names=["test"], order_by=["start_time DESC"],
                              filter_string="tags.`hyrax.stage` = 'train'")
    newest = runs.iloc[0]
    assert newest["status"] == "FINISHED" and newest["params.train.backend"] == "ray"
    assert newest["params.train.workers"] == "2"  # DDP across two workers of the head
    assert newest["params.model.widths"] == "[8, 8]"
    assert newest["tags.hyrax.input.dataset"] == result["dataset"].run_id  # cache shared
