"""The team stack, for real, on loopback: `infra/local_stack.py` starts PostgreSQL, an
S3-compatible store, the MLflow tracking server (PostgreSQL + S3 artifacts) and Chroma behind a
token. The demo pipeline runs against it by changing addresses only; artifacts land in the
bucket, the index in the Chroma server; a registered model is served from the registry; the
pipeline survives an MLflow server restart; no secret reaches the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

import hyrax_mlops as hm

from servers import model_server

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))
from local_stack import LocalStack, StackError, postgres_available  # noqa: E402

OVERRIDES = {"tracking.experiment": "team", "download.limit": 120, "train.epochs": 2,
             "model.latent_dim": 8, "model.widths": [8, 16, 16], "reduce.methods": ["pca"],
             "reduce.dims": [2]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed here (apt-get install -y postgresql; "
                    ".ci/run does it): the team-stack tests need a real one")
    s = LocalStack(tmp_path_factory.mktemp("stack"), ray=False)
    try:
        s.start()
    except StackError as exc:
        pytest.fail(f"the local stack did not start: {exc}")
    yield s
    left = s.stop()
    assert not left, f"processes of the stack still alive: {left}"


@pytest.fixture
def team(stack, tmp_path, monkeypatch):
    """A fresh working directory whose only link to the stack is its environment."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(stack.mlflow_url)
    yield stack
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="module")
def team_pipeline(stack, tmp_path_factory):
    """The demo pipeline against the stack, once for the module."""
    import mlflow

    work = tmp_path_factory.mktemp("team-work")
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    os.chdir(work)
    os.environ.update(stack.env)
    mlflow.set_tracking_uri(stack.mlflow_url)
    try:
        cfg = hm.load_config(None, {**OVERRIDES, "index.url": stack.chroma_url})
        result = hm.pipeline(cfg)
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return result, cfg, work


def bucket_keys(stack) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_pipeline_on_the_stack_puts_artifacts_in_s3_and_vectors_in_chroma(team_pipeline,
                                                                         team):
    import mlflow

    result, cfg, work = team_pipeline
    assert mlflow.get_tracking_uri().startswith("http://127.0.0.1")
    runs = mlflow.search_runs(experiment_names=["team"], output_format="list")
    assert {r.data.tags.get("hyrax.stage") for r in runs} >= {
        "pipeline", "download", "train", "infer", "index", "reduce"}
    assert all(r.info.status == "FINISHED" for r in runs)
    keys = bucket_keys(team)
    for stage, path in (("dataset", "dataset/manifest.json"), ("infer", "embeddings.parquet"),
                        ("train", "config/hyrax.toml")):
        rid = result[stage].run_id
        assert any(rid in k and k.endswith(path) for k in keys), (stage, path, keys[:5])
    assert not (work / "mlruns").exists() and not (work / "mlflow.db").exists()
    # the index lives in the Chroma server, behind its token
    table = hm.search_by_id(result["index"].run_id, "XDF00001", 5, cfg)
    assert table["object_id"].iloc[0] == "XDF00001" and len(table) == 5
    assert requests.get(f"{team.chroma_url}/api/v2/heartbeat", timeout=5).status_code == 401


def test_a_second_machine_reads_through_the_cache_once(team_pipeline, team, tmp_path):
    """Another working directory (another machine) reads the dataset from S3 through MLflow,
    once: the second read is the local cache keyed by run id."""
    from hyrax_mlops.tracking import ArtifactCache

    result, cfg, _ = team_pipeline
    first = ArtifactCache.of(cfg).fetch(result["dataset"].run_id, "dataset")
    assert first.is_relative_to(tmp_path) and (first / "manifest.json").is_file()
    stamp = (first / "manifest.json").stat().st_mtime_ns
    again = ArtifactCache.of(cfg).fetch(result["dataset"].run_id, "dataset")
    assert again == first and (again / "manifest.json").stat().st_mtime_ns == stamp


def test_registered_model_is_served_from_the_registry(team_pipeline, team, tmp_path):
    import mlflow

    from hyrax_mlops.data.dataset import Dataset

    result, cfg, _ = team_pipeline
    reg = hm.register(result["train"].run_id, "team-autoencoder", alias="champion")
    assert reg.version == "1"
    data = Dataset(Path(mlflow.artifacts.download_artifacts(
        run_id=result["dataset"].run_id, artifact_path="dataset")))
    emb = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=result["infer"].run_id, artifact_path="embeddings.parquet")).set_index("object_id")
    with model_server("models:/team-autoencoder@champion", team.mlflow_url,
                      tmp_path / "serve.log") as url:
        answer = requests.post(f"{url}/invocations", json={"inputs": data.images([0]).tolist()},
                               timeout=60)
    assert answer.ok, answer.text
    np.testing.assert_allclose(answer.json()["predictions"][0]["embedding"],
                               emb.loc[data.ids[0], "embedding"], rtol=1e-4, atol=1e-5)


def test_no_secret_reaches_the_store(team_pipeline, team):
    """The S3 secret and the Chroma token were in the environment the whole time: nothing in
    MLflow (params, tags, artifacts in the bucket) or the working directory holds them."""
    import boto3
    import mlflow

    result, cfg, work = team_pipeline
    secrets = [team.env["AWS_SECRET_ACCESS_KEY"],
               Path(team.chroma_token_file).read_text().strip()]
    assert all(len(s) >= 8 for s in secrets)
    leaks = []
    for run in mlflow.search_runs(experiment_names=["team"], output_format="list"):
        text = repr(run.data.params) + repr(run.data.tags)
        leaks += [f"run {run.info.run_id}" for s in secrets if s in text]
    s3 = boto3.client("s3", endpoint_url=team.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=team.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=team.env["AWS_SECRET_ACCESS_KEY"])
    for key in bucket_keys(team):
        body = s3.get_object(Bucket=team.bucket, Key=key)["Body"].read()
        leaks += [key for s in secrets if s.encode() in body]
    for path in work.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            leaks += [str(path) for s in secrets if s.encode() in blob]
    assert not leaks


EPOCHS = 40  # long enough (~10 s) for the server to go down and come back mid-training


def test_pipeline_survives_an_mlflow_server_restart(team, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    over = {**OVERRIDES, "tracking.experiment": "team-restart", "train.epochs": EPOCHS,
            "index.url": team.chroma_url}
    cmd = [sys.executable, "-m", "hyrax_mlops.cli", "pipeline"]
    for k, v in over.items():
        cmd += ["--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"]
    log = open(tmp_path / "pipeline.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        client, restarted = MlflowClient(), False
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name("team-restart")
            runs = client.search_runs([exp.experiment_id], "tags.`hyrax.stage` = 'train'") \
                if exp else []
            if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
                assert proc.poll() is None
                team.restart_mlflow()  # mid-training: the next metric write meets a dead server
                back = time.time() * 1000
                restarted = proc.poll() is None  # still training when the server came back
                break
            time.sleep(0.5)
        assert restarted, "training never started, or ended before the restart was over"
        assert proc.wait(timeout=600) == 0, (tmp_path / "pipeline.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    runs = mlflow.search_runs(experiment_names=["team-restart"], output_format="list")
    stages = [r.data.tags.get("hyrax.stage") for r in runs]
    assert sorted(stages) == sorted(["pipeline", "download", "train", "infer", "index",
                                     "reduce"]), stages  # none lost, none duplicated
    assert all(r.info.status == "FINISHED" for r in runs)
    train = next(r for r in runs if r.data.tags.get("hyrax.stage") == "train")
    history = MlflowClient().get_metric_history(train.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(EPOCHS))  # every epoch logged, once
    assert any(m.timestamp > back for m in history)  # ... some of them after the restart
