"""Who owns a RUNNING run, whether that owner still lives, and what to do with runs it left.

Every run hyrax opens (or takes over with `--resume`) carries its owner as tags: the host,
the pid and the process start time (so a recycled pid is not mistaken for the owner), plus
`hyrax.heartbeat`, the unix time refreshed by a daemon thread while the run is open. A run
is orphaned when its owner is gone: on the same host, the pid is dead or is another process;
on another host, the heartbeat is older than `HYRAX_OWNER_TIMEOUT_S`. `sweep` marks such runs
KILLED with the reason in `hyrax.error`, so a `kill -9` never leaves a run RUNNING for ever.

Environment: `HYRAX_HEARTBEAT_S` (seconds between heartbeats, default 20) and
`HYRAX_OWNER_TIMEOUT_S` (heartbeat age after which a run on another host counts as
orphaned, default 600).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass

from hyrax_mlops.errors import ConfigError, LineageError

TAG_HOST = "hyrax.owner.host"
TAG_PID = "hyrax.owner.pid"
TAG_STARTED = "hyrax.owner.started"  # the owner process's start time (unix seconds)
TAG_HEARTBEAT = "hyrax.heartbeat"  # unix seconds, refreshed while the run is open
_TAG_ERROR = "hyrax.error"
_TAG_STAGE = "hyrax.stage"
RESUMABLE = ("train", "download")  # stages with a --resume


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"environment variable {name} = '{raw}' is not a number of seconds "
                          f"above 0. Fix: unset it (default {default:g}) or set e.g. "
                          f"{name}={default:g}")
    return value


def heartbeat_s() -> float:
    return _seconds("HYRAX_HEARTBEAT_S", 20)


def timeout_s() -> float:
    return _seconds("HYRAX_OWNER_TIMEOUT_S", 600)


def _start_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def owner_tags() -> dict[str, str]:
    """This process as the owner of a run, with a fresh heartbeat."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
            TAG_STARTED: f"{_start_time(os.getpid()):.3f}", TAG_HEARTBEAT: f"{time.time():.0f}"}


@dataclass
class Owner:
    """The owner recorded on a run and whether it is still alive (`why` says how we know)."""

    host: str
    pid: int
    started: float
    heartbeat: float
    alive: bool
    why: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"process {self.pid} on {self.host} (started {when})"


def owner_of(run) -> Owner | None:
    """The owner of a run, or None when the run records none (made by an older hyrax, by
    `mlflow run` before its entry point claimed it, or by another tool): left alone."""
    tags = run.data.tags
    try:
        host, pid = tags[TAG_HOST], int(tags[TAG_PID])
        started, beat = float(tags[TAG_STARTED]), float(tags.get(TAG_HEARTBEAT, 0))
    except (KeyError, ValueError):
        return None
    if host != socket.gethostname():  # only its heartbeat tells
        age = time.time() - beat
        return Owner(host, pid, started, beat, age <= timeout_s(),
                     f"(its last heartbeat is {age:.0f} s old; HYRAX_OWNER_TIMEOUT_S = "
                     f"{timeout_s():.0f})")
    import psutil

    try:
        proc = psutil.Process(pid)
        alive = (abs(proc.create_time() - started) < 1.0  # else: the pid was reused
                 and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        alive = False
    except psutil.Error:  # there, but not ours to look at: assume it still works
        alive = True
    return Owner(host, pid, started, beat, alive, "(killed?)")


def orphan_reason(run, owner: Owner) -> str:
    """Why the run was marked KILLED, and what to do next."""
    rid, stage = run.info.run_id, run.data.tags.get(_TAG_STAGE, "?")
    if stage in RESUMABLE:
        fix = f"resume with: hyrax-mlops {stage} --resume {rid}"
    elif stage == "pipeline":
        fix = "run the pipeline again: its finished stages are reused"
    else:
        fix = f"run the {stage} stage again"
    return f"owner process {owner.pid} on host {owner.host} is gone {owner.why}; {fix}"


def mark_orphan(client, run, owner: Owner) -> str:
    """KILLED, with the reason as `hyrax.error`; returns the reason."""
    reason = orphan_reason(run, owner)
    client.set_tag(run.info.run_id, _TAG_ERROR, reason)
    client.set_terminated(run.info.run_id, status="KILLED")
    return reason


def sweep(client, experiment_id: str) -> list[tuple[str, str]]:
    """Mark every RUNNING run of the experiment whose owner is gone KILLED: one search.
    Returns (run id, reason) for each run marked."""
    marked = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=1000):
        owner = owner_of(run)
        if owner is not None and not owner.alive:
            marked.append((run.info.run_id, mark_orphan(client, run, owner)))
    return marked


def refuse_if_alive(run) -> Owner | None:
    """Before a `--resume`: a LineageError when the run's owner still works on it; the
    (dead) owner when there is one to replace."""
    if run.info.status != "RUNNING":
        return None
    owner = owner_of(run)
    if owner is not None and owner.alive:
        rid, stage = run.info.run_id, run.data.tags.get(_TAG_STAGE, "?")
        raise LineageError(
            f"run '{rid}' is still running in {owner.describe()}: wait for it or stop it "
            f"(kill {owner.pid} on {owner.host}), then `hyrax-mlops {stage} --resume {rid}`.")
    return owner


@contextlib.contextmanager
def heartbeat(tracking_uri: str, run_id: str):
    """Refresh the run's heartbeat every `HYRAX_HEARTBEAT_S` seconds while the block runs.
    A store that does not answer for a while costs heartbeats, never the stage."""
    from mlflow.tracking import MlflowClient

    stop = threading.Event()
    interval = heartbeat_s()

    def beat() -> None:
        client = None
        while not stop.wait(interval):
            try:
                client = client or MlflowClient(tracking_uri)
                client.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception:  # noqa: BLE001 - the next beat tries again
                pass

    thread = threading.Thread(target=beat, name=f"hyrax-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)  # a beat stuck on a dead store is a daemon: let it be
