"""`tune`: a hyperparameter sweep as a parent run with one nested run per trial; the best
trial's model, a results table and a parallel-coordinates plot are logged on the parent."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hyrax_mlops.config import Config
from hyrax_mlops.tracking import (
    DATASET_STAGES,
    ArtifactCache,
    StageRun,
    StageSpec,
    get_run,
    run_stage,
)

SECTIONS = ("data", "model", "train", "tune")


def check(cfg: Config) -> None:
    from hyrax_mlops.engine.ray_tune import check_space

    check_space(cfg)


def run(cfg: Config, dataset: str, *, force: bool = False,
        parent_run_id: str | None = None) -> StageRun:
    check(cfg)
    get_run(dataset, DATASET_STAGES)
    from hyrax_mlops.stages.train import run_name

    name = run_name(cfg).replace("train-", "tune-", 1) + f"-{cfg.tune.num_samples}trials"
    spec = StageSpec("tune", SECTIONS, inputs={"dataset": dataset}, name=name)
    return run_stage(spec, cfg, lambda run_id: _tune(cfg, dataset, run_id), force=force,
                     parent_run_id=parent_run_id)


def _trial_outcomes(grid, parent_run_id: str, experiment_id: str, epochs: int):
    """One row per trial; trial runs left RUNNING by ASHA are marked pruned (KILLED)."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.engine.ray_tune import TAG_TRIAL, TAG_TRIAL_STATUS

    client = MlflowClient()
    runs = {r.data.tags.get(TAG_TRIAL): r for r in client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000)}
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.split("_")[1]
        run = runs.get(trial_id)
        # ASHA stops a trial inside its last report, also at max_t: the epochs it reached
        # tell a pruned trial from a completed one
        reached = metrics.get("training_iteration", 0)
        if result.error:
            status = "failed"
        elif run is not None and run.info.status == "RUNNING" and reached < epochs:
            status = "pruned"
        else:
            status = "completed"
        if run is not None and run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, TAG_TRIAL_STATUS, status)
            if status == "failed":
                client.set_tag(run.info.run_id, "hyrax.error", str(result.error)[:4000])
            client.set_terminated(run.info.run_id, {"failed": "FAILED", "pruned": "KILLED",
                                                    "completed": "FINISHED"}[status])
        row = {"trial_id": trial_id, "status": status,
               "run_id": run.info.run_id if run is not None else "",
               "epochs": metrics.get("training_iteration", 0),
               **{k: v for k, v in (result.config or {}).items()}}
        for key in ("train_loss", "val_loss"):
            row[key] = metrics.get(key)
        if result.error:
            row["error"] = str(result.error).splitlines()[-1][:300] if str(result.error) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _tune(cfg: Config, dataset_run_id: str, run_id: str) -> dict[str, str]:
    import mlflow
    import numpy as np
    import plotly.graph_objects as go
    import torch

    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine.inputs import serving_example
    from hyrax_mlops.engine.ray_tune import run_sweep, trial_config
    from hyrax_mlops.engine.serving import log_hyrax_model
    from hyrax_mlops.models import build_model, model_params
    from hyrax_mlops.tracking import tracking_uri

    provider = DataProvider(dataset_run_id, cfg.data, cache=ArtifactCache.of(cfg))
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    with tempfile.TemporaryDirectory(prefix="hyrax-tune-") as tmp:
        grid = run_sweep(cfg, provider, run_id, experiment_id, tracking_uri(), Path(tmp))
        table = _trial_outcomes(grid, run_id, experiment_id, cfg.train.epochs)
        counts = table["status"].value_counts().to_dict()
        mlflow.log_metrics({"n_trials": len(table),
                            **{f"n_{s}": counts.get(s, 0) for s in ("completed", "pruned",
                                                                  "failed")}})
        path = Path(tmp) / "results.csv"
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path), "tune")
        mlflow.log_text(_parcoords(table, cfg, go).to_html(include_plotlyjs=True),
                        "tune/parallel_coordinates.html")
        ok = [r for r in grid if not r.error and r.metrics and cfg.tune.metric in r.metrics]
        if not ok:
            raise RuntimeError(f"all {len(table)} trials failed; see tune/results.csv")
        best = grid.get_best_result(cfg.tune.metric, cfg.tune.mode, scope="all")
        best_cfg = trial_config(cfg, best.config)
        mlflow.log_params({f"best.{k}": v for k, v in best.config.items()})
        mlflow.log_metric(f"best_{cfg.tune.metric}", float(
            np.nanmin(table[cfg.tune.metric]) if cfg.tune.mode == "min"
            else np.nanmax(table[cfg.tune.metric])))
        model = build_model(best_cfg.model, provider.input_shape, provider.data_info())
        with best.checkpoint.as_directory() as d:
            model.load_state_dict(torch.load(Path(d) / "best.pt", weights_only=True))
        mlflow.log_text(best_cfg.to_toml(), "tune/best_config.toml")
        info = log_hyrax_model(model, best_cfg.model.name,
                               model_params(best_cfg.model, provider.data_info()),
                               provider.input_shape, provider.normalizer, Path(tmp),
                               cfg.tune.register_as,
                               example=lambda: serving_example(provider, model),
                               link_prefixes=("best_", "n_"))
    mlflow.set_tag("hyrax.model_uri", info.model_uri)
    mlflow.set_tag("hyrax.best_trial", json.dumps(best.config, default=str))
    return {"model_uri": info.model_uri}


def _parcoords(table, cfg: Config, go):
    import pandas as pd

    done = table[table[cfg.tune.metric].notna()]
    dims = []
    for key in cfg.tune.space:
        if key in done:
            vals = pd.to_numeric(done[key], errors="coerce")
            if vals.isna().any():  # a categorical choice: label its values
                codes, names = pd.factorize(done[key].astype(str))
                dims.append(dict(label=key, values=codes, tickvals=list(range(len(names))),
                                 ticktext=list(names)))
            else:
                dims.append(dict(label=key, values=vals))
    dims.append(dict(label=cfg.tune.metric, values=done[cfg.tune.metric]))
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=done[cfg.tune.metric],
                                                            colorscale="Viridis",
                                                            showscale=True)))
    fig.update_layout(title=f"{len(done)} trials: parameters against {cfg.tune.metric}")
    return fig
