"""A train run whose driver is killed outright resumes, in the same run, from the state it
logged to MLflow after its last finished epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm
from hyrax_mlops.errors import LineageError

from conftest import DEMO_OVERRIDES


def test_train_resume_after_the_driver_is_killed(demo_store, demo_dir):
    result, cfg = demo_store
    cli = Path(sys.executable).parent / "hyrax-mlops"
    args = [str(cli), "train", "--dataset", result["dataset"].run_id]
    for key, value in DEMO_OVERRIDES.items():
        args += ["--set", f"{key}={value}".replace(" ", "")]
    args += ["--set", "train.epochs=10", "--set", "train.early_stopping_patience=0",
             "--set", "train.seed=7"]  # after the demo's: the last word wins
    proc = subprocess.Popen(args, cwd=demo_dir, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client, run_id = MlflowClient(), None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        runs = mlflow.search_runs(experiment_names=["test"], filter_string=(
            "tags.`hyrax.stage` = 'train' AND params.`train.seed` = '7' "
            "AND attributes.status = 'RUNNING'"))
        if len(runs):
            run_id = runs["run_id"].iloc[0]
            logged = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
            # epoch k's metrics are logged before its checkpoint: with three epochs' metrics
            # in, the state after epoch 1 is in MLflow
            if len(client.get_metric_history(run_id, "val_loss")) >= 3 and \
                    "checkpoints/last.pt" in logged:
                proc.send_signal(signal.SIGKILL)  # the driver dies outright, mid-run
                break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert run_id and proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert mlflow.get_run(run_id).info.status == "RUNNING"  # what a killed driver leaves

    resumed = hm.train(resume=run_id)
    assert resumed.run_id == run_id and not resumed.reused
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_run"] == 10
    assert int(run.data.tags["hyrax.resumed_from_epoch"]) >= 1
    assert {m.step for m in client.get_metric_history(run_id, "val_loss")} == set(range(10))
    assert hm.infer(cfg, train_run=run_id).run_id  # the resumed model is a model like any

    with pytest.raises(LineageError, match="FINISHED: there is nothing to resume"):
        hm.train(resume=run_id)
