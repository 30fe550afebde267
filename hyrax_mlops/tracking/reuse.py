"""Reuse and ownership: a FINISHED run with the same identity is reused; one process at a
time runs a stage identity (the others wait, then reuse); runs whose owner died are swept."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from hyrax_mlops import run_owner, store_lock
from hyrax_mlops.tracking.runs import TAG_ERROR, TAG_INPUT, TAG_RESUMED_AFTER, say
from hyrax_mlops.tracking.store import tracking_uri


def _identity_filter(tags: dict[str, str], status: str) -> str:
    clauses = [f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items())]
    clauses.append(f"attributes.status = '{status}'")
    return " AND ".join(clauses)


def _same_inputs(run, tags: dict[str, str]) -> bool:
    """No more inputs than the identity names (a search only checks those it names)."""
    return (sum(k.startswith(TAG_INPUT) for k in run.data.tags)
            == sum(k.startswith(TAG_INPUT) for k in tags))


def find_reusable(
    experiment_id: str, tags: dict[str, str], still_valid: Callable[[object], bool] | None = None
) -> str | None:
    """The newest FINISHED run whose identifying tags all match, if any."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id], _identity_filter(tags, "FINISHED"),
        order_by=["attributes.start_time DESC"], max_results=10,
    )
    for run in runs:
        if not _same_inputs(run, tags):
            continue
        if still_valid is None or still_valid(run):
            return run.info.run_id
    return None


WAIT_POLL_S = 2.0  # how often a process waiting for an identical stage on a server looks


def sweep_orphans(client, experiment_id: str) -> None:
    """RUNNING runs of the experiment whose owner process is gone become KILLED."""
    for run_id, reason in run_owner.sweep(client, experiment_id):
        say(f"run {run_id} was left RUNNING and is now marked KILLED: {reason}")


def _live_twin(client, experiment_id: str, tags: dict[str, str]):
    """A RUNNING run of the same stage identity owned by another live process, with its
    owner, or (None, None)."""
    me = run_owner.owner_tags()
    for run in client.search_runs([experiment_id], _identity_filter(tags, "RUNNING"),
                                  max_results=10):
        owner = run_owner.owner_of(run)
        mine = owner is not None and (owner.host, str(owner.pid)) == (
            me[run_owner.TAG_HOST], me[run_owner.TAG_PID])
        if owner is not None and owner.alive and not mine and _same_inputs(run, tags):
            return run, owner
    return None, None


def _say_waiting(stage: str, force: bool, run, owner, holder: str) -> None:
    who = (f"run {run.info.run_id} (same stage, same inputs) in {owner.describe()}"
           if run is not None else f"{holder} (same stage, same inputs)")
    then = ("then this one runs, reusing what it made" if force
            else "its run is reused when it finishes")
    say(f"{stage}: waiting for {who}; {then}")


@contextlib.contextmanager
def identity_lock(client, experiment_id: str, tags: dict[str, str], stage: str,
                   force: bool):
    """Only one process at a time looks for a reusable run of one stage identity and, finding
    none, runs it: the others wait, then reuse its run. Yields whether it waited.

    A local store: a file lock. A tracking server (or HYRAX_STAGE_LOCK=store): the store
    itself, by waiting while a live process has a RUNNING run of the same identity."""
    waited: list[str] = []

    def on_wait(holder: str) -> None:
        waited.append(holder)
        _say_waiting(stage, force, *_live_twin(client, experiment_id, tags), holder)

    uri = tracking_uri()
    lock = None
    if os.environ.get("HYRAX_STAGE_LOCK", "file") != "store":
        lock = store_lock.stage_lock(uri, {"store": uri, "experiment": experiment_id, **tags},
                                     on_wait)
    if lock is not None:
        with lock:
            if waited:
                sweep_orphans(client, experiment_id)  # it may have died, not finished
            yield bool(waited)
        return
    run, owner = _live_twin(client, experiment_id, tags)
    if run is not None:
        _say_waiting(stage, force, run, owner, "")
        while run is not None:
            time.sleep(WAIT_POLL_S)
            run, owner = _live_twin(client, experiment_id, tags)
        sweep_orphans(client, experiment_id)
        waited.append("")
    yield bool(waited)


def take_over(client, run_id: str) -> None:
    """Make this process the owner of a run to resume (refused while its owner lives)."""
    lock = store_lock.stage_lock(tracking_uri(), {"resume": run_id})
    with lock if lock is not None else contextlib.nullcontext():
        run = client.get_run(run_id)
        if run_owner.refuse_if_alive(run) is not None:  # RUNNING, its owner gone
            sweep_orphans(client, run.info.experiment_id)
            run = client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
        error = run.data.tags.get(TAG_ERROR)
        if error:  # the resumed run is not in error any more: keep why it stopped
            client.set_tag(run_id, TAG_RESUMED_AFTER, error)
            client.delete_tag(run_id, TAG_ERROR)
        for k, v in run_owner.owner_tags().items():
            client.set_tag(run_id, k, v)
