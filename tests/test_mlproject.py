"""The MLflow Projects door: `mlflow run . -e NAME --env-manager local` runs the same code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[1]


def test_mlflow_run_entry_point_makes_the_stage_run_and_reuses_it(store):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "download",
           "--env-manager", "local", "--experiment-name", "projects",
           "-P", f"overrides=download.limit=20 tracking.cache_dir={store / 'cache'}"]
    for _ in range(2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["projects"], order_by=["start_time ASC"])
    assert len(runs) == 2 and (runs["status"] == "FINISHED").all()
    first, second = runs.iloc[0], runs.iloc[1]
    # the run `mlflow run` made is the stage run itself, with the hyrax tags and artifacts
    assert first["tags.hyrax.stage"] == "download"
    assert first["params.download.limit"] == "20" and first["metrics.n_objects"] == 20
    # the second launch found it and pointed to it instead of recomputing
    assert second["tags.hyrax.launcher_for"] == first["run_id"]
    assert "reusing finished run" in done.stderr

    bad = subprocess.run(cmd[:-1] + ["overrides=download.limt=20"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "download.limt" in bad.stderr and "Did you mean" in bad.stderr
