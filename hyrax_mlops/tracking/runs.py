"""What a stage run is: its identifying tags, the spec they come from, what a stage
returns, and reading a finished run back (with its inputs)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from hyrax_mlops.code_version import code_version, external_code
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
            # plus the plugins and user models it runs, which live outside the package
            TAG_CODE_VERSION: code_version(self.stage) + external_code(cfg, self.sections),
        }
        tags.update({TAG_INPUT + name: rid for name, rid in self.inputs.items()})
        if self.fingerprint:
            tags[TAG_FINGERPRINT] = self.fingerprint
        return tags


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


def run_of_input(run_id: str, stage: str, name: str, expected: str):
    """A finished `stage` run made from input `name` = `expected` (an analyse run of these
    embeddings, a map of them), else a LineageError saying which run to pass."""
    run = get_run(run_id, stage)
    if run.data.tags.get(TAG_INPUT + name) != expected:
        raise LineageError(f"{stage} run '{run_id}' was made from other {name} than "
                           f"'{expected}': pass a {stage} run of those {name}.")
    return run


def input_run(run, name: str) -> str:
    """The run id a run consumed under `name` (e.g. the dataset of a train run)."""
    rid = run.data.tags.get(TAG_INPUT + name)
    if not rid:
        raise LineageError(f"run '{run.info.run_id}' has no input '{name}' in its lineage.")
    return rid


def say(msg: str) -> None:
    """A line on the terminal (stderr), with any credentials masked."""

    print(f"[hyrax] {redact(msg)}", file=sys.stderr, flush=True)
