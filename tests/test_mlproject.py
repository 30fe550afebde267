"""The MLflow Projects door: `mlflow run . -e NAME --env-manager local` runs the same code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[1]


def test_mlflow_run_entry_points_share_runs_and_cache(store):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}")
    small = (f"download.limit=40 train.epochs=1 model.widths=[8,8] model.latent_dim=4 "
             f"reduce.methods=['pca'] tracking.cache_dir={store / 'cache'} "
             f"index.path={store / 'chroma'}")

    def mlflow_run(entry: str, overrides: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry,
               "--env-manager", "local", "--experiment-name", "projects",
               "-P", f"overrides={overrides}"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    done = mlflow_run("pipeline", small)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["projects"])
    assert (runs["status"] == "FINISHED").all()
    launcher = runs[runs["tags.hyrax.stage"] == "pipeline"]
    assert len(launcher) == 1  # the run `mlflow run` made is the pipeline's parent run
    stages = runs[runs["tags.mlflow.parentRunId"] == launcher["run_id"].iloc[0]]
    assert sorted(stages["tags.hyrax.stage"]) == ["download", "index", "infer", "reduce",
                                                  "train"]

    again = mlflow_run("download", small)  # same config: reused, and the launch says so
    assert again.returncode == 0 and "reusing finished run" in again.stderr
    runs = mlflow.search_runs(experiment_names=["projects"], order_by=["start_time DESC"])
    download = stages[stages["tags.hyrax.stage"] == "download"]["run_id"].iloc[0]
    assert runs.iloc[0]["tags.hyrax.launcher_for"] == download

    trained = mlflow_run("train", small.replace("train.epochs=1", "train.epochs=2"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    newest = mlflow.search_runs(experiment_names=["projects"],
                                order_by=["start_time DESC"]).iloc[0]
    # the launch is the new train run itself, fed by the cached dataset
    assert newest["tags.hyrax.stage"] == "train" and newest["params.train.epochs"] == "2"
    assert newest["tags.hyrax.input.dataset"] == download

    bad = mlflow_run("download", "download.limt=20")
    assert bad.returncode != 0 and "download.limt" in bad.stderr and "Did you mean" in bad.stderr
