"""MLflow conventions in one place: where runs go, how stage runs are tagged, reused and traced.

Every stage run carries `hyrax.stage`, `hyrax.config_hash` (of the config sections the stage
reads), `hyrax.code_version` and one `hyrax.input.<name> = <run_id>` per input. A FINISHED run
with the same four is reused instead of recomputed, unless `force` is given.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hyrax_mlops import run_context, run_owner, store_lock
from hyrax_mlops.code_version import code_version
from hyrax_mlops.config import Config
from hyrax_mlops.errors import LineageError
from hyrax_mlops.redact import redact

TAG_STAGE = "hyrax.stage"
TAG_CONFIG_HASH = "hyrax.config_hash"
TAG_CODE_VERSION = "hyrax.code_version"
TAG_INPUT = "hyrax.input."
TAG_FINGERPRINT = "hyrax.data_fingerprint"
TAG_STAGE_RUN = "hyrax.stage_run."  # on a pipeline run: the run used for each stage
TAG_REUSED = "hyrax.reused."  # on a pipeline run: "true" where the stage run was reused
TAG_LAUNCHED = "hyrax.launcher_for"  # on an `mlflow run` run whose stage was reused
TAG_ERROR = "hyrax.error"
TAG_RESUMED_AFTER = "hyrax.resumed_after"  # the error of a run before it was resumed
CONFIG_ARTIFACT = "config/hyrax.toml"
DATASET_STAGES = ("download", "ingest", "filter")  # the stages whose runs are datasets



def _quiet_environment() -> None:
    """No telemetry or network look-ups from the libraries we drive, and none of their noise
    on the terminal (artifact progress bars, type-hint warnings: `quiet.quiet_mlflow`)."""
    from hyrax_mlops.quiet import quiet_mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    quiet_mlflow()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_ready_stores: set[str] = set()
_SCHEMA_TRIES = 30  # half a second apart


def use_store() -> None:
    """Point MLflow at the tracking store, for code that only reads runs. The first use of
    a fresh SQLite store (MLflow creates its schema then) is serialised between processes:
    two doing it at once would leave a store that no command can open."""
    _quiet_environment()
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    db = store_lock.sqlite_file(uri)
    if uri not in _ready_stores and db is not None:
        from mlflow.tracking import MlflowClient

        with store_lock.schema_lock(uri):
            if not db.exists() or db.stat().st_size == 0:
                _create_sqlite_store(db)
            for attempt in range(_SCHEMA_TRIES):
                try:
                    MlflowClient(uri).search_experiments(max_results=1)
                    break
                except Exception as exc:  # noqa: BLE001 - sqlalchemy's error, by its text
                    # another program (`mlflow ui`, a notebook) is creating the schema
                    # without our lock: wait until it is done instead of failing
                    if "already exists" not in str(exc) or attempt == _SCHEMA_TRIES - 1:
                        raise
                    time.sleep(0.5)
        _ready_stores.add(uri)


def _schema_version(db: Path) -> str | None:
    """The alembic revision a SQLite store's schema is at (None: none yet, or unreadable)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def _create_sqlite_store(db: Path) -> None:
    """Make a fresh SQLite store whole, then put it in place: other programs (`mlflow ui`, a
    notebook) never see a half-made schema. If one of them creates the file meanwhile, wait
    for its schema to reach the same revision instead of migrating it at the same time."""
    from mlflow.tracking import MlflowClient

    tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
        head = _schema_version(tmp)
        try:
            os.link(tmp, db)  # atomic, and never over a file that appeared meanwhile
        except FileExistsError:
            deadline = time.monotonic() + 60
            while _schema_version(db) != head and time.monotonic() < deadline:
                time.sleep(0.25)
    finally:
        tmp.unlink(missing_ok=True)


def setup(cfg: Config) -> str:
    """Point MLflow at the store and return the experiment id the stage runs go into
    (creating the experiment if needed). Under `mlflow run` it is the one `mlflow run` chose.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    # MLflow 3 records an experiment's kind in this tag; hyrax's are model training ("Machine
    # learning": runs, metric charts, models), not GenAI (traces, evaluations).
    kind = {"mlflow.experimentKind": "custom_model_development"}

    def _mark_model_training(exp) -> None:  # experiments made before hyrax set it
        if "mlflow.experimentKind" not in (exp.tags or {}):  # never override a user's choice
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *next(iter(kind.items())))

    use_store()
    launcher = run_context.current().launcher()
    if launcher:
        exp = mlflow.get_experiment(mlflow.get_run(launcher).info.experiment_id)
        _mark_model_training(exp)
        return exp.experiment_id
    name = cfg.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        with store_lock.schema_lock(tracking_uri()):  # two processes may create it at once
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                try:
                    return mlflow.create_experiment(name, tags=kind)
                except MlflowException:  # another process (on a server store) was first
                    exp = mlflow.get_experiment_by_name(name)
                    if exp is None:
                        raise
    _mark_model_training(exp)
    return exp.experiment_id



# --------------------------------------------------------------------------- stage runs


@dataclass
class StageRun:
    """What a stage returns: its run id and whether an earlier run was reused; `name` is the
    run's name in the store and `summary` what it made, a few lines read back from the
    finished run (`summaries`)."""

    stage: str
    run_id: str
    reused: bool
    outputs: dict[str, str] = field(default_factory=dict)
    name: str = ""
    summary: list[str] = field(default_factory=list)

    def headline(self) -> str:
        """One line: stage, ran/reused, run name and id."""
        how = "reused" if self.reused else "ran"
        name = f"{self.name}  " if self.name else ""
        return f"{self.stage:<9} {how:<7} {name}run {self.run_id}"

    def __str__(self) -> str:
        return "\n".join([self.headline(), *(f"  {line}" for line in self.summary)])


@dataclass
class StageSpec:
    """How a stage is identified: which config sections it reads and which runs it consumes."""

    stage: str
    sections: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None  # e.g. of a user's input directory: part of the identity
    name: str | None = None  # the run name, e.g. "train-conv_autoencoder-ld16-e3"; not identity

    def tags(self, cfg: Config) -> dict[str, str]:
        tags = {
            TAG_STAGE: self.stage,
            TAG_CONFIG_HASH: cfg.section_hash(self.sections),
            TAG_CODE_VERSION: code_version(self.stage),
        }
        tags.update({TAG_INPUT + name: rid for name, rid in self.inputs.items()})
        if self.fingerprint:
            tags[TAG_FINGERPRINT] = self.fingerprint
        return tags


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


# --------------------------------------------------------------------------- run ownership

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
def _identity_lock(client, experiment_id: str, tags: dict[str, str], stage: str,
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


def _take_over(client, run_id: str) -> None:
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


def run_stage(
    spec: StageSpec,
    cfg: Config,
    body: Callable[[str], dict[str, str] | None],
    *,
    force: bool = False,
    parent_run_id: str | None = None,
    still_valid: Callable[[object], bool] | None = None,
    resume_run_id: str | None = None,
) -> StageRun:
    """Reuse a matching FINISHED run, or open a run, log the config and call `body(run_id)`.

    A failing body leaves the run FAILED (KILLED on Ctrl-C) with the error as a tag, so the
    next call runs the stage again; nothing FINISHED is ever overwritten. The run records
    this process as its owner (`run_owner`): a run whose owner died is marked KILLED by the
    next stage in its experiment. Two processes about to run the same stage on the same
    inputs do it once: the second waits for the first and reuses its run (a forced one
    waits, then runs).
    """
    from mlflow.tracking import MlflowClient

    experiment_id = setup(cfg)
    tags = spec.tags(cfg)
    client = MlflowClient()
    sweep_orphans(client, experiment_id)
    if resume_run_id:  # continue an interrupted run in place: same id, same tags
        _take_over(client, resume_run_id)
        return _open_run(spec, cfg, body, tags, client, experiment_id, parent_run_id,
                         resume_run_id=resume_run_id)
    launcher = run_context.current().claim() if parent_run_id is None else None
    # forced runs wait too: an identical pipeline (always forced) waits for the whole first
    # one, then finds each of its stages done
    with _identity_lock(client, experiment_id, tags, spec.stage, force) as waited:
        found = None if force else find_reusable(experiment_id, tags, still_valid)
        if found:
            if launcher:
                client.set_tag(launcher, TAG_LAUNCHED, found)
            if waited:
                say(f"{spec.stage}: reusing run {found}, just finished by the process it "
                    "waited for")
            else:
                say(f"{spec.stage}: reusing finished run {found} (--force re-runs it)")
            return _finished(StageRun(spec.stage, found, reused=True), client)
        return _open_run(spec, cfg, body, tags, client, experiment_id, parent_run_id,
                         launcher=launcher)


def _finished(result: StageRun, client=None) -> StageRun:
    """The run's name and summary lines, read back from the store."""
    from hyrax_mlops.summaries import summarize

    try:
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
        result.name = client.get_run(result.run_id).info.run_name or ""
    except Exception:  # noqa: BLE001 - a name to show, never a reason to fail
        pass
    result.summary = summarize(result.stage, result.run_id)
    return result


@functools.cache
def _default_config() -> Config:
    from hyrax_mlops.config import load_config

    return load_config(None)


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def name_hint(stage: str, *parts, cfg: Config | None = None,
              changed: dict[str, str] | None = None) -> str:
    """A run name from its stage, the parts that say what it is, and (`changed`: config key ->
    abbreviation) the settings that differ from the shipped defaults, e.g.
    `name_hint("train", "conv_autoencoder", "ld16", "e3", cfg=cfg, changed={"train.lr": "lr"})`
    -> "train-conv_autoencoder-ld16-e3-lr0.001" when train.lr was changed."""
    out = [stage, *(_short(p) for p in parts if p not in (None, ""))]
    if cfg is not None and changed:
        defaults = _default_config()
        for key, abbr in changed.items():
            section, _, field_name = key.partition(".")
            value = getattr(getattr(cfg, section), field_name, None)
            if value != getattr(getattr(defaults, section), field_name, None):
                out.append(f"{abbr}{_short(value)}")
    return "-".join(out)


def run_name(spec: StageSpec, tags: dict[str, str]) -> str:
    """What a run is called: the stage's hint (stage, model, the settings that tell runs
    apart), else the stage and a short config hash. Kept to 60 characters."""
    name = spec.name or f"{spec.stage}-{tags[TAG_CONFIG_HASH][:6]}"
    name = "".join(c if c.isprintable() else "_" for c in name)
    return name if len(name) <= 60 else name[:53] + "-" + tags[TAG_CONFIG_HASH][:6]


def _open_run(spec: StageSpec, cfg: Config, body, tags: dict[str, str], client,
              experiment_id: str, parent_run_id: str | None, *, launcher: str | None = None,
              resume_run_id: str | None = None) -> StageRun:
    """Run `body` in a new run, in the `mlflow run` run, or in the run being resumed."""
    import mlflow

    name = run_name(spec, tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    owner = run_owner.owner_tags()
    if resume_run_id:  # already taken over
        run_id = resume_run_id
    elif launcher:
        run_id = launcher
        for k, v in {**tags, **owner, "mlflow.runName": name}.items():
            client.set_tag(run_id, k, v)
    else:
        run_id = client.create_run(experiment_id, tags={**tags, **owner},
                                   run_name=name).info.run_id

    active = mlflow.active_run()
    with run_owner.heartbeat(mlflow.get_tracking_uri(), run_id), \
            mlflow.start_run(run_id=run_id, nested=active is not None) as run:
        mlflow.log_text(cfg.to_toml(), CONFIG_ARTIFACT)
        mlflow.log_params(cfg.flat(spec.sections))
        try:
            outputs = body(run.info.run_id) or {}
        except KeyboardInterrupt:
            mlflow.set_tag(TAG_ERROR, "interrupted")
            mlflow.end_run(status="KILLED")
            raise
        except BaseException as exc:
            mlflow.set_tag(TAG_ERROR, redact(f"{type(exc).__name__}: {exc}")[:4000])
            mlflow.end_run(status="FAILED")
            raise
    return _finished(StageRun(spec.stage, run_id, reused=False, outputs=outputs), client)


# --------------------------------------------------------------------------- reading runs


def interrupted_run(run_id: str, stage: str):
    """A run of `stage` that did not finish, and the config it was started with: what a
    `--resume RUN_ID` continues."""
    import mlflow

    from hyrax_mlops.config import load_config

    use_store()
    try:
        run = mlflow.get_run(run_id)
    except Exception:
        raise LineageError(f"run '{run_id}' does not exist in this tracking store.") from None
    actual = run.data.tags.get(TAG_STAGE)
    if actual != stage:
        raise LineageError(f"run '{run_id}' is a '{actual}' run, not a {stage} run: only a "
                           f"{stage} run resumes here.")
    if run.info.status == "FINISHED":
        raise LineageError(f"run '{run_id}' is FINISHED: there is nothing to resume.")
    if run_owner.refuse_if_alive(run) is not None:  # RUNNING, but its owner is gone
        from mlflow.tracking import MlflowClient

        sweep_orphans(MlflowClient(), run.info.experiment_id)
    cfg = load_config(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                          artifact_path=CONFIG_ARTIFACT))
    return run, cfg



def get_run(run_id: str, stage: str | Iterable[str] | None = None):
    """A run that exists, is FINISHED and (optionally) is of the expected stage."""
    import mlflow
    from mlflow.exceptions import MlflowException


    try:
        run = mlflow.get_run(run_id)
    except MlflowException as exc:
        where = redact(mlflow.get_tracking_uri())  # never the store's user:password@
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise LineageError(
                f"run '{run_id}' does not exist in {where}. "
                "Fix: pass a run id from `mlflow ui` or `hyrax-mlops lineage`."
            ) from None
        raise LineageError(  # the store did not answer: not the same as "no such run"
            f"cannot read run '{run_id}' from {where} ({redact(str(exc))[:300]}). Fix: check "
            "that the tracking store is up and that MLFLOW_TRACKING_URI and its credentials "
            "(MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN) "
            "are right."
        ) from None
    actual = run.data.tags.get(TAG_STAGE)
    wanted = {stage} if isinstance(stage, str) else set(stage or ())
    if wanted and actual not in wanted:
        raise LineageError(
            f"run '{run_id}' is a '{actual}' run, not one of: {', '.join(sorted(wanted))}."
        )
    if run.info.status != "FINISHED":
        raise LineageError(f"run '{run_id}' is {run.info.status}, not FINISHED: re-run its stage.")
    return run


def input_run(run, name: str) -> str:
    """The run id a run consumed under `name` (e.g. the dataset of a train run)."""
    rid = run.data.tags.get(TAG_INPUT + name)
    if not rid:
        raise LineageError(f"run '{run.info.run_id}' has no input '{name}' in its lineage.")
    return rid


def find_in_lineage(run_id: str, stage: str) -> str:
    """Walk a run's inputs upstream to the nearest run of `stage`."""
    seen: set[str] = set()
    todo = [run_id]
    while todo:
        rid = todo.pop(0)
        if rid in seen:
            continue
        seen.add(rid)
        run = get_run(rid)
        if run.data.tags.get(TAG_STAGE) == stage:
            return rid
        todo += [v for k, v in sorted(run.data.tags.items()) if k.startswith(TAG_INPUT)]
        todo += [v for k, v in sorted(run.data.tags.items()) if k.startswith(TAG_STAGE_RUN)]
    raise LineageError(f"no '{stage}' run upstream of run '{run_id}'.")


@functools.lru_cache(maxsize=4096)
def _artifact_uri(store: str, run_id: str) -> str:
    """A run's artifact location never changes: one store query per run, not per read."""
    import mlflow

    return mlflow.get_run(run_id).info.artifact_uri


def _local_artifact(run_id: str, path: str) -> Path | None:
    """The artifact's own path when the run's artifact store is a local directory."""
    from urllib.parse import unquote, urlparse

    import mlflow

    parsed = urlparse(_artifact_uri(mlflow.get_tracking_uri(), run_id))
    if parsed.scheme not in ("", "file"):
        return None
    target = Path(unquote(parsed.path)) / path
    return target if target.exists() else None


def fetch_artifacts(run_id: str, path: str, cfg: Config) -> Path:
    """Local copy of a run's artifact (file or folder), through MLflow, cached by run id.

    Works the same for a local store and a remote one (S3, an MLflow server). Artifacts that
    already sit on a local disk are read where they are: copying gigabytes of shards would
    cost more than the work that reads them.
    """
    import fcntl

    import mlflow

    local = _local_artifact(run_id, path)
    if local is not None:
        return local
    root = Path(cfg.tracking.cache_dir).expanduser().resolve() / run_id
    key = hashlib.sha1(path.encode()).hexdigest()[:10]
    marker = root / f".complete-{key}"
    target = root / path
    if marker.exists() and target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{key}", "w") as lock:  # workers on one machine share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and target.exists():
            return target
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                            dst_path=str(root))
        marker.touch()
    return target


# --------------------------------------------------------------------------- lineage


@dataclass
class LineageNode:
    """One run in a lineage walk: `label` is the input name it was consumed as."""

    run_id: str
    label: str
    depth: int
    stage: str = "?"
    status: str = ""
    config_hash: str = "-"
    code_version: str = "-"
    repeat: bool = False  # already listed higher up
    missing: bool = False  # not in this tracking store


def lineage(run_id: str) -> list[LineageNode]:
    """The runs behind `run_id` (its inputs, their inputs, ...), depth first."""
    import mlflow

    use_store()
    nodes: list[LineageNode] = []
    shown: set[str] = set()

    def visit(rid: str, label: str, depth: int) -> None:
        node = LineageNode(rid, label, depth)
        nodes.append(node)
        try:
            run = mlflow.get_run(rid)
        except Exception:
            node.missing = True
            return
        t = run.data.tags
        node.stage, node.status = t.get(TAG_STAGE, "?"), run.info.status
        node.config_hash = t.get(TAG_CONFIG_HASH, "-")
        node.code_version = t.get(TAG_CODE_VERSION, "-")
        if rid in shown:
            node.repeat = True
            return
        shown.add(rid)
        children = sorted((k[len(TAG_INPUT):], v) for k, v in t.items() if k.startswith(TAG_INPUT))
        children += sorted(
            (k[len(TAG_STAGE_RUN):], v) for k, v in t.items() if k.startswith(TAG_STAGE_RUN)
        )
        for name, child in children:
            visit(child, name, depth + 1)

    visit(run_id, "", 0)
    return nodes


def consumers(run_id: str, experiment_ids: list[str]) -> list[tuple[str, str, str]]:
    """Runs that took `run_id` as an input: (input name, stage, run id), newest first."""
    from mlflow.tracking import MlflowClient

    out = []
    for name in ("dataset", "model", "embeddings"):
        for run in MlflowClient().search_runs(
            experiment_ids, f"tags.`{TAG_INPUT}{name}` = '{run_id}'",
            order_by=["attributes.start_time DESC"], max_results=50,
        ):
            out.append((name, run.data.tags.get(TAG_STAGE, "?"), run.info.run_id))
    return out


def lineage_lines(run_id: str) -> list[str]:
    """The chain of runs behind `run_id`, one line each, indented by depth."""
    lines = []
    for n in lineage(run_id):
        pad = "  " * n.depth + ("└─ " if n.depth else "")
        label = f"{n.label}: " if n.label else ""
        if n.missing:
            lines.append(f"{pad}{label}{n.run_id}  (missing from this tracking store)")
        elif n.repeat:
            lines.append(f"{pad}{label}{n.stage:<8} {n.run_id}  (shown above)")
        else:
            lines.append(f"{pad}{label}{n.stage:<8} {n.run_id}  {n.status:<8} "
                         f"config {n.config_hash}  code {n.code_version}")
    return lines


def say(msg: str) -> None:
    """A line on the terminal (stderr), with any credentials masked."""

    print(f"[hyrax] {redact(msg)}", file=sys.stderr, flush=True)
