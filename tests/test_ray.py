"""Ray on a real `ray start --head` cluster on 127.0.0.1 (loopback only): one Ray Train worker
reproduces the in-process loop, two train with DDP (gloo), a seeded Optuna sweep, Ray Data
inference, and a killed worker that resumes from its checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real Ray cluster: `ray start --head` on 127.0.0.1 with its own temp dir (stopped
    after, by its own PIDs), which the stages join through RAY_ADDRESS as a user's would."""
    from hyrax_mlops.config import load_config

    from servers import ray_head

    home = tmp_path_factory.mktemp("ray-home")
    (home / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    settings = dict(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                    RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
                    # Ray Train collects reported checkpoints at each health check (2 s by
                    # default); checking often lets a short test kill a worker after one
                    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    old = {k: os.environ.get(k) for k in (*settings, "RAY_ADDRESS")}
    os.environ.update(settings)
    # imported after the settings: Ray reads some of them at import, and without them it
    # rewrites a 127.0.0.1 head address to the machine's external one and never connects
    ray = pytest.importorskip("ray")
    from hyrax_mlops.engine.ray_env import init_ray

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with ray_head(env) as head:
        os.environ["RAY_ADDRESS"] = head["address"]
        init_ray(load_config())
        yield ray
        ray.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, key),
                                    key=lambda m: m.step)]


def test_one_ray_worker_matches_the_in_process_loop(ray_cluster, demo_store):
    result, cfg = demo_store
    small = {"train.epochs": 2, "train.early_stopping_patience": 0}
    local = hm.train(cfg, {**small, "train.backend": "local"}, dataset=result["dataset"].run_id)
    on_ray = hm.train(cfg, {**small, "train.backend": "ray", "train.workers": 1,
                            "train.cpus_per_worker": 1}, dataset=result["dataset"].run_id)
    assert not on_ray.reused and on_ray.run_id != local.run_id
    for key in ("train_loss", "val_loss"):
        a, b = history(local.run_id, key), history(on_ray.run_id, key)
        assert len(a) == len(b) == 2
        assert b == pytest.approx(a, rel=1e-4)
    run = mlflow.get_run(on_ray.run_id)
    assert run.data.params["train.backend"] == "ray"
    assert run.data.metrics["best_val_loss"] == pytest.approx(
        mlflow.get_run(local.run_id).data.metrics["best_val_loss"], rel=1e-4)


def test_two_ray_workers_train_with_ddp(ray_cluster, demo_store):
    result, cfg = demo_store
    run = hm.train(cfg, {"train.epochs": 2, "train.backend": "ray", "train.workers": 2,
                         "train.cpus_per_worker": 0.9}, dataset=result["dataset"].run_id)
    got = mlflow.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert len(history(run.run_id, "val_loss")) == 2
    assert history(run.run_id, "train_loss")[1] < history(run.run_id, "train_loss")[0]
    emb = hm.infer(cfg, train_run=run.run_id)  # the model it logged embeds like any other
    from hyrax_mlops.stages.infer import read_embeddings

    ids, vectors = read_embeddings(emb.run_id)
    assert vectors.shape == (300, 16)


def test_a_seeded_optuna_sweep_with_asha_nests_every_trial(ray_cluster, demo_store):
    import pandas as pd

    result, cfg = demo_store
    sweep = {
        "train.epochs": 3, "tune.num_samples": 4, "tune.max_concurrent": 2, "tune.seed": 3,
        "tune.space": {
            "train.lr": {"type": "loguniform", "low": 3e-4, "high": 1e-2},
            # seven halvings do not fit a 64-pixel stamp: those trials fail, the sweep goes on
            "model.widths": {"type": "choice", "values": [[16, 16, 16], [8] * 7]},
        },
    }
    run = hm.tune(cfg, sweep, dataset=result["dataset"].run_id)
    parent = mlflow.get_run(run.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["hyrax.stage"] == "tune"
    trials = mlflow.search_runs(experiment_names=["test"],
                                filter_string=f"tags.`mlflow.parentRunId` = '{run.run_id}'")
    assert len(trials) == 4 and set(trials["tags.hyrax.stage"]) == {"trial"}
    assert {"params.train.lr", "params.model.widths"} <= set(trials.columns)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="tune/results.csv"))
    assert len(table) == 4 and parent.data.metrics["n_trials"] == 4
    status = dict(zip(table["run_id"], table["status"], strict=True))
    for _, t in trials.iterrows():  # MLflow status agrees with what happened to the trial
        expected = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
        assert t["status"] == expected[status[t["run_id"]]]
    assert (table["status"] == "failed").sum() >= 1 and (table["status"] == "completed").any()
    assert "divisible" in " ".join(table["error"].dropna())
    files = {f.path for f in MlflowClient().list_artifacts(run.run_id, "tune")}
    assert {"tune/results.csv", "tune/parallel_coordinates.html",
            "tune/best_config.toml"} <= files
    from hyrax_mlops.engine.bundle import load_bundle

    best = load_bundle(parent.data.tags["hyrax.model_uri"])
    assert best.spec["params"]["widths"] == [16, 16, 16]
    # the best trial's model shows what it takes, and the sweep's figures, in the MLflow UI
    info = mlflow.models.get_model_info(parent.data.tags["hyrax.model_uri"])
    shape = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
    assert list(shape) == [-1, 3, 64, 64] and info.saved_input_example_info is not None
    on_model = {m.key: m.value for m in mlflow.get_logged_model(info.model_id).metrics}
    assert on_model["n_trials"] == 4
    assert on_model["best_val_loss"] == pytest.approx(parent.data.metrics["best_val_loss"])


def test_ray_data_inference_writes_the_same_embeddings(ray_cluster, demo_store):
    import numpy as np

    from hyrax_mlops.stages.infer import read_embeddings

    result, cfg = demo_store
    on_ray = hm.infer(cfg, {"infer.backend": "ray", "infer.workers": 2,
                            "infer.cpus_per_worker": 0.5, "infer.batch_size": 64},
                      train_run=result["train"].run_id)
    assert not on_ray.reused and on_ray.run_id != result["infer"].run_id
    ids_local, local = read_embeddings(result["infer"].run_id)
    ids_ray, ray_emb = read_embeddings(on_ray.run_id)
    assert list(ids_ray) == list(ids_local)
    np.testing.assert_allclose(ray_emb, local, rtol=1e-4, atol=1e-5)


def test_ray_data_inference_reads_every_modality_of_a_fusion_model(ray_cluster, tmp_path):
    """Light curves, spectra and catalog features of the real multimodal set, embedded by
    Ray Data actors exactly as by the in-process loop."""
    import numpy as np

    from hyrax_mlops.stages.infer import read_embeddings

    from conftest import DATA, in_store

    mm = DATA / "multimodal"
    over = {"pipeline.dataset": "ingest", "ingest.catalog": str(mm / "objects.csv"),
            "data.label_column": "coarse_class", "data.features": ["ra", "dec"],
            "data.lightcurve_points": 64, "data.spectrum_grid": [3600.0, 10000.0, 256],
            "model": {"name": "fusion_classifier", "fusion": "concat", "dim": 16},
            "train.epochs": 1, "data.batch_size": 8}
    with in_store(tmp_path):
        local = hm.infer(None, over)
        on_ray = hm.infer(None, {**over, "infer.backend": "ray", "infer.workers": 2,
                                 "infer.cpus_per_worker": 0.5, "infer.batch_size": 16})
        ids_local, emb_local = read_embeddings(local.run_id)
        ids_ray, emb_ray = read_embeddings(on_ray.run_id)
    assert on_ray.run_id != local.run_id and len(ids_ray) == 43
    assert list(ids_ray) == list(ids_local)
    np.testing.assert_allclose(emb_ray, emb_local, rtol=1e-4, atol=1e-5)


def test_a_killed_worker_resumes_from_its_last_checkpoint(ray_cluster, demo_store):
    import signal
    import threading
    import time

    import psutil

    result, cfg = demo_store
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        client = MlflowClient()
        while time.monotonic() < deadline and not killed:
            runs = mlflow.search_runs(experiment_names=["test"], filter_string=(
                "tags.`hyrax.stage` = 'train' AND attributes.status = 'RUNNING' "
                "AND params.`train.max_failures` = '1'"))
            # two epochs logged, and a health check since: a checkpoint has been collected
            if len(runs) and len(client.get_metric_history(runs["run_id"].iloc[0],
                                                            "val_loss")) >= 2:
                time.sleep(0.5)
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.info["pid"])
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    run = hm.train(cfg, {"train.epochs": 8, "train.backend": "ray", "train.workers": 1,
                         "train.max_failures": 1, "train.early_stopping_patience": 0},
                   dataset=result["dataset"].run_id)
    killer.join(timeout=5)
    assert killed, "no Ray Train worker was found to kill"
    got = mlflow.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics["epochs_run"] == 8
    steps = {m.step for m in MlflowClient().get_metric_history(run.run_id, "val_loss")}
    assert steps == set(range(8))  # nothing lost, nothing beyond the planned epochs
    # the restarted worker continued from a checkpoint instead of starting over
    assert int(got.data.tags["hyrax.resumed_from_epoch"]) >= 0
