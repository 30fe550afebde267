"""Runs know their owner process: a `kill -9` leaves no run RUNNING once the next hyrax
command meets it, `--resume` of a run whose owner still works is refused, and hyrax
processes sharing one store (even a fresh one) run each identical stage once.

Everything is real: the commands run as subprocesses on real XDF galaxies (or against the
local HSC stand-in), are killed with SIGKILL, and the assertions read the SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from survey_servers import HSCServer

import hyrax_mlops as hm
from hyrax_mlops import run_owner
from hyrax_mlops.errors import ConfigError, LineageError

from conftest import in_store

CLI = [sys.executable, "-m", "hyrax_mlops.cli"]
EXPERIMENT = "own"
SMALL = {
    "tracking.experiment": EXPERIMENT,
    "download.limit": 60,
    "train.epochs": 2,
    "model.latent_dim": 8,
    "model.widths": [8, 16, 16],
    "reduce.methods": ["pca"],
    "reduce.dims": [2],
}
STAGES = ("download", "train", "infer", "index", "reduce")
SKY = Path(__file__).parent / "data" / "sky"
PASSWORD = "pw-own-3r"
HSC_CFG = """
[tracking]
experiment = "own"
[download]
source = "hsc"
catalog = "{catalog}"
bands = ["g", "r", "i"]
stamp_size = {stamp}
pixel_scale = 0.06
concurrency = 1
backoff_s = 0.01
[download.hsc]
url = "{url}"
rects_per_request = 2
"""


def write_config(path: Path, overrides: dict) -> Path:
    sections: dict[str, dict] = {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        sections.setdefault(section, {})[name] = value
    lines = []
    for section, values in sections.items():
        lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(args: list[str], cwd: Path, name: str) -> subprocess.Popen:
    """A hyrax command in the background; its terminal goes to `<cwd>/<name>.log`."""
    env = {**os.environ, "HYRAX_HEARTBEAT_S": "1"}
    with open(cwd / f"{name}.log", "w") as log:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = cwd / f"{name}.log"  # what it printed, shown when it ends too early
    return proc


def log_of(cwd: Path, name: str) -> str:
    return (cwd / f"{name}.log").read_text()


def wait_for(what: str, predicate, *procs: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        for proc in procs:
            assert proc.poll() is None, (f"a command ended (rc {proc.returncode}) before "
                                         f"{what}:\n{proc.log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def runs(**tags) -> list:
    clauses = [f"tags.`{k.replace('__', '.')}` = '{v}'" for k, v in tags.items()]
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string=" AND ".join(clauses), max_results=1000)


def running() -> list[str]:
    return [r.info.run_id for r in runs() if r.info.status == "RUNNING"]


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def epochs_logged(run_id: str) -> int:
    return len(MlflowClient().get_metric_history(run_id, "val_loss"))


def has_checkpoint(run_id: str) -> bool:
    return "checkpoints/last.pt" in {f.path for f in MlflowClient().list_artifacts(
        run_id, "checkpoints")}


def train_run(seed: int, min_epochs: int) -> str | None:
    """The RUNNING train run of `seed` once it has `min_epochs` epochs and a checkpoint."""
    for run in runs(hyrax__stage="train"):
        if (run.info.status == "RUNNING" and run.data.params.get("train.seed") == str(seed)
                and epochs_logged(run.info.run_id) >= min_epochs
                and has_checkpoint(run.info.run_id)):
            return run.info.run_id
    return None


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A store with the dataset of 60 XDF galaxies: (folder, config file, dataset run id)."""
    folder = tmp_path_factory.mktemp("own")
    with in_store(folder):
        cfg_path = write_config(folder / "small.toml", SMALL)
        dataset = hm.download(hm.load_config(cfg_path)).run_id
        yield folder, cfg_path, dataset


def test_kill_9_of_a_train_is_marked_killed_and_resumes_and_a_live_one_is_not_resumed(
        small_store, capsys):
    folder, cfg_path, dataset = small_store
    base = [*CLI, "train", "-c", str(cfg_path), "--dataset", dataset,
            "--set", "train.early_stopping_patience=0"]
    live = start([*base, "--set", "train.seed=1", "--set", "train.epochs=20"], folder, "live")
    doomed = start([*base, "--set", "train.seed=2", "--set", "train.epochs=12"], folder, "doomed")
    try:
        live_id = wait_for("the live train logged an epoch", lambda: train_run(1, 1), live)
        owner = mlflow.get_run(live_id).data.tags
        assert owner[run_owner.TAG_PID] == str(live.pid)
        assert owner[run_owner.TAG_HOST] and float(owner[run_owner.TAG_STARTED]) > 0
        beat = float(owner[run_owner.TAG_HEARTBEAT])
        # two processes must never write the same steps into one run
        with pytest.raises(LineageError, match=f"still running in process {live.pid} on "):
            hm.train(resume=live_id)
        wait_for("a heartbeat", lambda: float(mlflow.get_run(live_id).data.tags[
            run_owner.TAG_HEARTBEAT]) > beat, live)

        doomed_id = wait_for("the doomed train logged two epochs", lambda: train_run(2, 2),
                             doomed)
        killed(doomed)
        assert mlflow.get_run(doomed_id).info.status == "RUNNING"  # until someone looks
        assert live.wait(timeout=240) == 0, log_of(folder, "live")
    finally:
        for proc in (live, doomed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    run = mlflow.get_run(live_id)  # the refused resume took nothing from the live run
    assert run.info.status == "FINISHED"
    history = MlflowClient().get_metric_history(live_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(20))

    capsys.readouterr()
    assert hm.download(hm.load_config(cfg_path)).reused  # any next command in the store
    said = capsys.readouterr().err
    run = mlflow.get_run(doomed_id)
    assert run.info.status == "KILLED" and running() == []
    reason = run.data.tags["hyrax.error"]
    assert f"owner process {doomed.pid} on host " in reason and "is gone" in reason
    assert f"hyrax-mlops train --resume {doomed_id}" in reason
    assert f"run {doomed_id} was left RUNNING and is now marked KILLED" in said

    resumed = hm.train(resume=doomed_id)
    assert resumed.run_id == doomed_id and not resumed.reused
    run = mlflow.get_run(doomed_id)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_run"] == 12
    assert run.data.tags[run_owner.TAG_PID] == str(os.getpid())  # taken over
    assert "hyrax.error" not in run.data.tags
    assert run.data.tags["hyrax.resumed_after"] == reason
    assert {m.step for m in MlflowClient().get_metric_history(doomed_id, "val_loss")} == \
        set(range(12))
    assert not [t for t in threading.enumerate() if t.name.startswith("hyrax-heartbeat")]


def test_kill_9_of_a_pipeline_marks_the_parent_and_its_current_stage_killed(small_store):
    folder, cfg_path, _ = small_store
    proc = start([*CLI, "pipeline", "-c", str(cfg_path), "--set", "train.seed=3",
                  "--set", "train.epochs=30", "--set", "train.early_stopping_patience=0"],
                 folder, "pipeline-killed")
    try:
        train_id = wait_for("the pipeline's train", lambda: train_run(3, 1), proc)
        killed(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    parent_id = mlflow.get_run(train_id).data.tags["mlflow.parentRunId"]
    assert {parent_id, train_id} <= set(running())

    hm.download(hm.load_config(cfg_path))
    assert running() == []
    parent, train = mlflow.get_run(parent_id), mlflow.get_run(train_id)
    assert parent.info.status == train.info.status == "KILLED"
    assert f"owner process {proc.pid}" in parent.data.tags["hyrax.error"]
    assert "run the pipeline again" in parent.data.tags["hyrax.error"]
    assert f"hyrax-mlops train --resume {train_id}" in train.data.tags["hyrax.error"]


@pytest.fixture
def hsc_env(monkeypatch):
    monkeypatch.setenv("HSC_SSP_CAS_USER", "hsc-user")
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)


def hsc_config(folder: Path, server: HSCServer, stamp: int) -> Path:
    """A download from the local HSC stand-in; `stamp` sets the run's identity."""
    path = folder / f"hsc{stamp}.toml"
    path.write_text(HSC_CFG.format(catalog=SKY / "catalog.csv", url=server.api_url,
                                   stamp=stamp))
    return path


def test_a_download_killed_is_marked_killed_and_a_live_one_is_not_resumed(store, hsc_env):
    from hyrax_mlops.data.dataset import Dataset

    staging = store / ".hyrax/cache/downloads"

    def journal(min_lines: int, exclude: str = "") -> Path | None:
        for path in staging.glob("*/journal.jsonl"):
            if path.parent.name != exclude and len(path.read_text().splitlines()) >= min_lines:
                return path
        return None

    with HSCServer(password=PASSWORD, latency_s=0.15) as server:
        live_cfg, doomed_cfg = hsc_config(store, server, 16), hsc_config(store, server, 12)
        live = start([*CLI, "download", "-c", str(live_cfg)], store, "live-download")
        try:
            path = wait_for("the live download fetched some", lambda: journal(6), live)
            live_id = path.parent.name
            with pytest.raises(LineageError, match=f"still running in process {live.pid}"):
                hm.download(resume=live_id)
            assert path.exists()  # its staging folder is untouched
            assert live.wait(timeout=240) == 0, log_of(store, "live-download")
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
        run = mlflow.get_run(live_id)
        assert run.info.status == "FINISHED" and "hyrax.error" not in run.data.tags
        data = Dataset(Path(mlflow.artifacts.download_artifacts(run_id=live_id,
                                                                artifact_path="dataset")))
        assert len(data.ids) == 22  # all of the catalog but the two positions off the sky

        doomed = start([*CLI, "download", "-c", str(doomed_cfg)], store, "doomed-download")
        try:
            path = wait_for("the doomed download fetched some", lambda: journal(6, live_id),
                            doomed)
            killed(doomed)
        finally:
            if doomed.poll() is None:
                doomed.kill()
                doomed.wait()
        doomed_id = path.parent.name
        assert mlflow.get_run(doomed_id).info.status == "RUNNING"
        assert hm.download(hm.load_config(live_cfg)).run_id == live_id  # reused; sweeps
        run = mlflow.get_run(doomed_id)
        assert run.info.status == "KILLED" and running() == []
        assert f"hyrax-mlops download --resume {doomed_id}" in run.data.tags["hyrax.error"]
        assert hm.download(resume=doomed_id).run_id == doomed_id
        assert mlflow.get_run(doomed_id).info.status == "FINISHED"


def _one_run_per_stage(parents: list, counts: dict[str, int], done: tuple = ()) -> None:
    """Each stage (but those `done` before) ran in exactly one of the parents and was reused
    by the other, and the store holds `counts` runs of each stage."""
    for stage in STAGES:
        key = "dataset" if stage == "download" else stage
        used = {p.data.tags[f"hyrax.stage_run.{key}"] for p in parents}
        ran = [p for p in parents if p.data.tags[f"hyrax.reused.{key}"] == "false"]
        assert len(used) == 1, f"{stage}: {used}"
        assert len(ran) == (0 if stage in done else 1), f"{stage} ran in {len(ran)} pipelines"
    waited = [p for p in parents if p.data.tags["hyrax.reused.train"] == "true"]
    assert len(waited) == 1 and all(  # the second waited for the whole first pipeline
        waited[0].data.tags[f"hyrax.reused.{k}"] == "true" for k in ("dataset", *STAGES[1:]))
    by_stage = Counter(r.data.tags.get("hyrax.stage") for r in runs())
    assert dict(by_stage) == counts


def test_identical_pipelines_started_together_run_each_stage_once(store):
    cfg_a = write_config(store / "a.toml", SMALL)
    pair = [start([*CLI, "pipeline", "-c", str(cfg_a)], store, f"a{i}") for i in range(2)]
    for i, proc in enumerate(pair):  # a fresh store: both set it up at once
        assert proc.wait(timeout=400) == 0, log_of(store, f"a{i}")
    parents = runs(hyrax__stage="pipeline")
    assert [p.info.status for p in parents] == ["FINISHED"] * 2 and running() == []
    _one_run_per_stage(parents, {"pipeline": 2, **dict.fromkeys(STAGES, 1)})
    logs = log_of(store, "a0") + log_of(store, "a1")
    assert "pipeline: waiting for " in logs and "(same stage, same inputs)" in logs

    third = subprocess.run([*CLI, "pipeline", "-c", str(cfg_a)], cwd=store, text=True,
                           capture_output=True, timeout=300)  # the next command works
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count(" reused ") == len(STAGES), third.stdout

    # an existing store: the dataset is reused by both, the rest runs once
    cfg_b = write_config(store / "b.toml", {**SMALL, "train.seed": 11})
    pair = [start([*CLI, "pipeline", "-c", str(cfg_b)], store, f"b{i}") for i in range(2)]
    for i, proc in enumerate(pair):
        assert proc.wait(timeout=400) == 0, log_of(store, f"b{i}")
    parents = [p for p in runs(hyrax__stage="pipeline")
               if p.data.params.get("train.seed") == "11"]
    assert len(parents) == 2
    _one_run_per_stage(parents, {"pipeline": 5, "download": 1, **dict.fromkeys(STAGES[1:], 2)},
                       done=("download",))


def test_a_tracking_server_waits_through_the_store(store, hsc_env, monkeypatch, capsys):
    """Without a shared folder (a tracking server), the second command finds the first's
    RUNNING run with a live owner, waits for it and reuses it."""
    from hyrax_mlops.tracking import use_store

    use_store()  # the store exists before this process polls it beside the command
    with HSCServer(password=PASSWORD, latency_s=0.2) as server:
        cfg_path = hsc_config(store, server, 16)
        first = start([*CLI, "download", "-c", str(cfg_path)], store, "first-download")
        try:
            first_id = wait_for("the first download's run", lambda: [
                r.info.run_id for r in runs(hyrax__stage="download")
                if r.info.status == "RUNNING"], first)[0]
            monkeypatch.setenv("HYRAX_STAGE_LOCK", "store")
            second = hm.download(hm.load_config(cfg_path))
            assert first.wait(timeout=60) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert second.run_id == first_id and second.reused
    said = capsys.readouterr().err
    assert f"waiting for run {first_id} (same stage, same inputs) in process {first.pid}" in said
    assert [r.info.status for r in runs(hyrax__stage="download")] == ["FINISHED"]


def test_a_run_of_another_host_is_an_orphan_only_when_its_heartbeat_is_old(store):
    from hyrax_mlops.tracking import setup, sweep_orphans

    experiment = setup(hm.load_config(None, {"tracking.experiment": EXPERIMENT}))
    client = MlflowClient()

    def run_owned_by(host: str, pid: int, started: float, beat: float) -> str:
        return client.create_run(experiment, tags={
            "hyrax.stage": "train", run_owner.TAG_HOST: host, run_owner.TAG_PID: str(pid),
            run_owner.TAG_STARTED: f"{started:.3f}", run_owner.TAG_HEARTBEAT: f"{beat:.0f}",
        }).info.run_id

    now, me = time.time(), run_owner.owner_tags()
    stale = run_owned_by("elsewhere", 4242, now - 5000, now - 3600)
    fresh = run_owned_by("elsewhere", 4242, now - 5000, now - 5)
    reused_pid = run_owned_by(me[run_owner.TAG_HOST], os.getpid(), now - 99999, now)
    legacy = client.create_run(experiment, tags={"hyrax.stage": "train"}).info.run_id

    sweep_orphans(client, experiment)
    status = {rid: client.get_run(rid).info.status for rid in (stale, fresh, reused_pid, legacy)}
    assert status == {stale: "KILLED", fresh: "RUNNING", reused_pid: "KILLED",
                      legacy: "RUNNING"}
    assert "host elsewhere" in client.get_run(stale).data.tags["hyrax.error"]
    with pytest.raises(LineageError, match="still running in process 4242 on elsewhere"):
        hm.train(resume=fresh)


def test_a_heartbeat_survives_a_store_that_does_not_answer(monkeypatch):
    monkeypatch.setenv("HYRAX_HEARTBEAT_S", "0.05")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.monotonic()
    with run_owner.heartbeat("http://127.0.0.1:9", "0" * 32):  # nothing listens there
        time.sleep(0.5)
    assert time.monotonic() - started < 10
    monkeypatch.setenv("HYRAX_HEARTBEAT_S", "soon")
    with pytest.raises(ConfigError, match="HYRAX_HEARTBEAT_S = 'soon'"):
        run_owner.heartbeat_s()


PLAIN_MLFLOW = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
HYRAX_STORE = ("import os, sys; os.environ['MLFLOW_TRACKING_URI'] = sys.argv[1]\n"
               "from hyrax_mlops.tracking import use_store; use_store()")


def test_a_fresh_store_survives_hyrax_and_another_mlflow_program_at_once(tmp_path):
    """`mlflow ui` or a notebook opening a fresh store while a hyrax command does: MLflow's
    schema set-up is not safe to run twice at once (it left `_alembic_tmp_*` tables and a
    store nothing could open). hyrax builds the schema aside and links it into place."""
    for trial in range(3):
        uri = f"sqlite:///{tmp_path / f's{trial}' / 'mlflow.db'}"
        (tmp_path / f"s{trial}").mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE,
                                  text=True) for code in (PLAIN_MLFLOW, HYRAX_STORE)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        assert MlflowClient(uri).search_experiments()  # usable afterwards, by anyone
