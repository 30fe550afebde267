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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hyrax_mlops import __version__
from hyrax_mlops.config import Config
from hyrax_mlops.errors import LineageError

TAG_STAGE = "hyrax.stage"
TAG_CONFIG_HASH = "hyrax.config_hash"
TAG_CODE_VERSION = "hyrax.code_version"
TAG_INPUT = "hyrax.input."
TAG_FINGERPRINT = "hyrax.data_fingerprint"
TAG_STAGE_RUN = "hyrax.stage_run."  # on a pipeline run: the run used for each stage
TAG_REUSED = "hyrax.reused."  # on a pipeline run: "true" where the stage run was reused
TAG_LAUNCHED = "hyrax.launcher_for"  # on an `mlflow run` run whose stage was reused
TAG_ERROR = "hyrax.error"
CONFIG_ARTIFACT = "config/hyrax.toml"
DATASET_STAGES = ("download", "ingest", "filter")  # the stages whose runs are datasets

# `mlflow run` hands its run to the entry point as MLFLOW_RUN_ID, and MLflow deletes that
# variable once a run has been started: remember it for the life of the process.
_LAUNCHER_RUN_ID: str | None = os.environ.get("MLFLOW_RUN_ID") or None
_launcher_claimed = False
_upstream_depth = 0


def _quiet_environment() -> None:
    """No telemetry or network look-ups from the libraries we drive."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def use_store() -> None:
    """Point MLflow at the tracking store, for code that only reads runs."""
    _quiet_environment()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())


def setup(cfg: Config) -> str:
    """Point MLflow at the store and return the experiment id the stage runs go into
    (creating the experiment if needed). Under `mlflow run` it is the one `mlflow run` chose.
    """
    import mlflow

    use_store()
    launcher = _launcher_run_id()
    if launcher:
        return mlflow.get_run(launcher).info.experiment_id
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(cfg.tracking.experiment)


def _launcher_run_id() -> str | None:
    global _LAUNCHER_RUN_ID
    _LAUNCHER_RUN_ID = _LAUNCHER_RUN_ID or os.environ.get("MLFLOW_RUN_ID") or None
    return _LAUNCHER_RUN_ID


@contextlib.contextmanager
def upstream():
    """Stages run inside this block are prerequisites: they never take over the run that
    `mlflow run` made for the stage the user asked for."""
    global _upstream_depth
    _upstream_depth += 1
    try:
        yield
    finally:
        _upstream_depth -= 1


def _claim_launcher() -> str | None:
    """The `mlflow run` run, the first time a requested (not upstream) stage asks for it."""
    global _launcher_claimed
    launcher = _launcher_run_id()
    if not launcher or _launcher_claimed or _upstream_depth:
        return None
    _launcher_claimed = True
    return launcher


@functools.cache
def code_version() -> str:
    """Package version plus a hash of the package source: changes whenever the code does."""
    pkg = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(pkg.rglob("*")):
        if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(pkg)).encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


# --------------------------------------------------------------------------- stage runs


@dataclass
class StageRun:
    """What a stage returns: its run id and whether an earlier run was reused."""

    stage: str
    run_id: str
    reused: bool
    outputs: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        how = "reused" if self.reused else "ran"
        return f"{self.stage:<9} {how:<7} run {self.run_id}"


@dataclass
class StageSpec:
    """How a stage is identified: which config sections it reads and which runs it consumes."""

    stage: str
    sections: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None  # e.g. of a user's input directory: part of the identity

    def tags(self, cfg: Config) -> dict[str, str]:
        tags = {
            TAG_STAGE: self.stage,
            TAG_CONFIG_HASH: cfg.section_hash(self.sections),
            TAG_CODE_VERSION: code_version(),
        }
        tags.update({TAG_INPUT + name: rid for name, rid in self.inputs.items()})
        if self.fingerprint:
            tags[TAG_FINGERPRINT] = self.fingerprint
        return tags


def find_reusable(
    experiment_id: str, tags: dict[str, str], still_valid: Callable[[object], bool] | None = None
) -> str | None:
    """The newest FINISHED run whose identifying tags all match, if any."""
    from mlflow.tracking import MlflowClient

    clauses = [f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items())]
    clauses.append("attributes.status = 'FINISHED'")
    runs = MlflowClient().search_runs(
        [experiment_id], " AND ".join(clauses), order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    n_inputs = sum(k.startswith(TAG_INPUT) for k in tags)
    for run in runs:
        if sum(k.startswith(TAG_INPUT) for k in run.data.tags) != n_inputs:
            continue
        if still_valid is None or still_valid(run):
            return run.info.run_id
    return None


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
    next call runs the stage again; nothing FINISHED is ever overwritten.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    experiment_id = setup(cfg)
    tags = spec.tags(cfg)
    client = MlflowClient()
    if resume_run_id:  # continue an interrupted run in place: same id, same tags
        force, launcher = True, None
        client.update_run(resume_run_id, status="RUNNING")
    else:
        launcher = _claim_launcher() if parent_run_id is None else None

    if not force:
        found = find_reusable(experiment_id, tags, still_valid)
        if found:
            if launcher:
                client.set_tag(launcher, TAG_LAUNCHED, found)
            say(f"{spec.stage}: reusing finished run {found} (--force re-runs it)")
            return StageRun(spec.stage, found, reused=True)

    run_name = f"{spec.stage}-{tags[TAG_CONFIG_HASH][:6]}"
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if resume_run_id:
        run_id = resume_run_id
    elif launcher:
        run_id = launcher
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        client.set_tag(run_id, "mlflow.runName", run_name)
    else:
        run_id = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id

    active = mlflow.active_run()
    with mlflow.start_run(run_id=run_id, nested=active is not None) as run:
        mlflow.log_text(cfg.to_toml(), CONFIG_ARTIFACT)
        mlflow.log_params(cfg.flat(spec.sections))
        try:
            outputs = body(run.info.run_id) or {}
        except KeyboardInterrupt:
            mlflow.set_tag(TAG_ERROR, "interrupted")
            mlflow.end_run(status="KILLED")
            raise
        except BaseException as exc:
            mlflow.set_tag(TAG_ERROR, f"{type(exc).__name__}: {exc}"[:4000])
            mlflow.end_run(status="FAILED")
            raise
    return StageRun(spec.stage, run_id, reused=False, outputs=outputs)


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
    cfg = load_config(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                          artifact_path=CONFIG_ARTIFACT))
    return run, cfg



def get_run(run_id: str, stage: str | Iterable[str] | None = None):
    """A run that exists, is FINISHED and (optionally) is of the expected stage."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise LineageError(
            f"run '{run_id}' does not exist in {mlflow.get_tracking_uri()}. "
            "Fix: pass a run id from `mlflow ui` or `hyrax-mlops lineage`."
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
    print(f"[hyrax] {msg}", file=sys.stderr, flush=True)
