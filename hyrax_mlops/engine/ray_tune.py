"""Hyperparameter sweeps: Ray Tune with a seeded Optuna searcher and ASHA early stopping.

Each trial trains with the in-process loop on its config (the sweep's config with the sampled
values set) and is its own MLflow run, nested under the tune run.
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

import torch

from hyrax_mlops.config import Config, SearchParam
from hyrax_mlops.errors import ConfigError

TAG_TRIAL = "hyrax.trial_id"
TAG_TRIAL_STATUS = "hyrax.trial_status"


def check_space(cfg: Config) -> None:
    """Every swept key must be a config key (any key for [model]); fails before any run."""
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty. Fix: add e.g. "
                          '"train.lr" = { type = "loguniform", low = 1e-4, high = 1e-2 } '
                          "under [tune.space].")
    sections = {n: f.annotation for n, f in Config.model_fields.items()}
    for key in cfg.tune.space:
        section, _, name = key.partition(".")
        if section not in sections or not name:
            close = difflib.get_close_matches(section, list(sections), n=1)
            hint = f" Did you mean '{close[0]}.{name}'?" if close else ""
            raise ConfigError(f"tune.space key '{key}' is not a config key.{hint}")
        if section == "model":
            continue  # checked against the model's signature when trials build it
        fields = list(sections[section].model_fields)
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" Did you mean '{section}.{close[0]}'?" if close else ""
            raise ConfigError(f"tune.space key '{key}' is not a config key.{hint}")
    from hyrax_mlops.models import model_params

    model_params(cfg.model)


def ray_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    from ray import tune

    def one(p: SearchParam):
        if p.type == "uniform":
            return tune.uniform(p.low, p.high)
        if p.type == "loguniform":
            return tune.loguniform(p.low, p.high)
        if p.type == "int":
            return tune.randint(int(p.low), int(p.high) + 1)
        return tune.choice(p.values)

    return {key: one(p) for key, p in space.items()}


def trial_config(cfg: Config, sampled: dict[str, Any]) -> Config:
    """The sweep's config with one trial's values set (validated like any override)."""
    from hyrax_mlops.config import with_overrides

    return with_overrides(cfg, {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in sampled.items()})


# Ray's own lines that say nothing to a user of `tune` (its INFO: "Checkpoint successfully
# created at ...", "Wrote the latest version of all result files ..."); warnings still show
_RAY_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage",
                "ray.tune.tune", "ray.tune.execution.tune_controller")


def _quiet_ray_loggers() -> None:
    import logging

    for name in (*_RAY_LOGGERS, "optuna"):  # optuna: "A new study created in memory"
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def _trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """A Ray Tune function trainable: train one configuration, report each epoch."""
    import ray.tune

    _quiet_ray_loggers()  # in the trial's worker process
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.data.normalize import Normalizer
    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine.loop import fit, seed_everything
    from hyrax_mlops.models import build_model
    from hyrax_mlops.tracking import TAG_STAGE

    sampled = dict(config)
    base = Config.model_validate(ctx["cfg"])
    client = MlflowClient(ctx["tracking_uri"])
    trial_id = ray.tune.get_context().get_trial_id()
    run = client.create_run(ctx["experiment_id"], run_name=f"trial-{trial_id}", tags={
        "mlflow.parentRunId": ctx["parent_run_id"], TAG_STAGE: "trial", TAG_TRIAL: trial_id})
    rid = run.info.run_id
    for key, value in sampled.items():
        client.log_param(rid, key, value)
    cfg = trial_config(base, sampled)
    seed_everything(cfg.train.seed)
    provider = DataProvider(ctx["dataset_run_id"], cfg.data,
                            Normalizer.from_dict(ctx["normalizer"]),
                            ctx["dataset_dir"])
    model = build_model(cfg.model, provider.input_shape, provider.data_info())
    with tempfile.TemporaryDirectory() as tmp:
        best = Path(tmp) / "best.pt"

        def on_epoch(s) -> None:
            metrics = {"train_loss": s.train_loss, "val_loss": s.val_loss,
                       "epoch_time_s": s.epoch_time_s}
            for k, v in metrics.items():
                client.log_metric(rid, k, v, step=s.epoch)
            with tempfile.TemporaryDirectory() as d:
                torch.save(torch.load(best, weights_only=True), Path(d) / "best.pt")
                ray.tune.report({**metrics, "epoch": s.epoch},
                                checkpoint=ray.tune.Checkpoint.from_directory(d))

        fit(model, provider.dataloader("train", shuffle=True, seed=cfg.train.seed),
            provider.dataloader("val"), cfg.train, best, on_epoch, progress=False)
    client.set_terminated(rid, "FINISHED")
    client.set_tag(rid, TAG_TRIAL_STATUS, "completed")


def run_sweep(cfg: Config, provider, parent_run_id: str, experiment_id: str,
              tracking_uri: str, storage: Path):
    """Run the sweep; return Ray's ResultGrid. Ray prints nothing of its own (no tables, no
    TensorBoard hint): the tune stage's summary says what the sweep found."""
    import os

    from hyrax_mlops.engine.ray_env import init_ray, quiet_ray_environment

    quiet_ray_environment()
    # Ray's new console output prints its experiment table and TensorBoard hint at any
    # verbosity; the legacy one (with verbose=0) prints nothing
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    init_ray(cfg)
    _quiet_ray_loggers()
    t = cfg.tune
    searcher = ConcurrencyLimiter(OptunaSearch(seed=t.seed), max_concurrent=t.max_concurrent)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                              grace_period=t.grace_period, reduction_factor=t.reduction_factor)
    resources = {"cpu": t.cpus_per_trial, **({"gpu": t.gpus_per_trial}
                                              if t.gpus_per_trial else {})}
    ctx = {
        "cfg": cfg.as_dict(), "dataset_run_id": provider.run_id,
        "dataset_dir": str(provider.data.root), "normalizer": provider.normalizer.to_dict(),
        "parent_run_id": parent_run_id, "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
    }
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, ctx=ctx), resources),
        param_space=ray_space(t.space),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=t.num_samples, metric=t.metric, mode=t.mode),
        run_config=tune.RunConfig(name=f"hyrax-tune-{parent_run_id}", storage_path=str(storage),
                                  verbose=0, progress_reporter=None),
    )
    return tuner.fit()
