"""Running a stage: reuse a matching run or open one (new, the `mlflow run` launcher's, or
one being resumed), log its config and call the stage's body; and what each run is called."""

from __future__ import annotations

import functools
from collections.abc import Callable

from hyrax_mlops import run_context, run_owner
from hyrax_mlops.config import Config
from hyrax_mlops.errors import LineageError
from hyrax_mlops.redact import redact
from hyrax_mlops.tracking.reuse import find_reusable, identity_lock, sweep_orphans, take_over
from hyrax_mlops.tracking.runs import (
    CONFIG_ARTIFACT,
    TAG_CONFIG_HASH,
    TAG_ERROR,
    TAG_LAUNCHED,
    TAG_STAGE,
    StageRun,
    StageSpec,
    say,
)
from hyrax_mlops.tracking.store import setup, use_store


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
        take_over(client, resume_run_id)
        return _open_run(spec, cfg, body, tags, client, experiment_id, parent_run_id,
                         resume_run_id=resume_run_id)
    launcher = run_context.current().claim() if parent_run_id is None else None
    # forced runs wait too: an identical pipeline (always forced) waits for the whole first
    # one, then finds each of its stages done
    with identity_lock(client, experiment_id, tags, spec.stage, force) as waited:
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


def _finished(result: StageRun, client=None, name: str | None = None) -> StageRun:
    """The run's name (read back from the store unless this process just named it) and its
    summary lines."""
    from hyrax_mlops.summaries import summarize

    if name is None:
        try:
            if client is None:
                from mlflow.tracking import MlflowClient

                client = MlflowClient()
            name = client.get_run(result.run_id).info.run_name
        except Exception:  # noqa: BLE001 - a name to show, never a reason to fail
            pass
    result.name = name or ""
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
    return _finished(StageRun(spec.stage, run_id, reused=False, outputs=outputs), client,
                     None if resume_run_id else name)


def interrupted_run(run_id: str, stage: str):
    """A run of `stage` that did not finish, and the config it was started with: what a
    `--resume RUN_ID` continues."""
    import mlflow


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
    cfg = config_of(run_id)
    if cfg is None:
        raise LineageError(f"run '{run_id}' logged no {CONFIG_ARTIFACT}: it cannot be resumed "
                           "with the config it was started with.")
    return run, cfg


def config_of(run_id: str) -> Config | None:
    """The config a run was made with (its logged config.toml; a stage logs the sections it
    reads, the others are defaults), or None when it logged none. Read in place from a local
    store; downloaded from any other."""
    import tempfile

    import mlflow

    from hyrax_mlops.config import load_config
    from hyrax_mlops.tracking.artifacts import local_artifact

    try:
        local = local_artifact(run_id, CONFIG_ARTIFACT)
    except Exception:  # noqa: BLE001 - no such run: the same answer as no config
        return None
    if local is not None:
        return load_config(local)
    with tempfile.TemporaryDirectory(prefix="hyrax-config-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                       artifact_path=CONFIG_ARTIFACT,
                                                       dst_path=tmp)
        except Exception:  # noqa: BLE001 - a model logged outside hyrax-mlops has none
            return None
        return load_config(path)
