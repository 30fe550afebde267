"""Rank models by the quality of their latent space, with their validation loss beside it.

A lower loss does not make a more useful latent space: `compare` puts infer runs (or the
analyse runs that evaluated them) in order of `quality.knn_purity`, then
`quality.silhouette`, and shows each model's `val_loss` so the two can be told apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from hyrax_mlops.tracking import TAG_INPUT, get_run, input_run, use_store

QUALITY = ("knn_purity", "knn_purity_chance", "silhouette", "map_knn_purity",
           "map_silhouette", "map_neighbourhood_recall")
LOSSES = ("best_val_loss", "val_loss")


def _val_loss(model_run_id: str | None) -> float:
    import mlflow

    if not model_run_id:
        return math.nan
    try:
        metrics = mlflow.get_run(model_run_id).data.metrics
    except Exception:
        return math.nan
    return next((float(metrics[k]) for k in LOSSES if k in metrics), math.nan)


def compare_runs(run_ids: Iterable[str]) -> pd.DataFrame:
    """One row per run, best latent space first: rank, run, stage, infer_run, label,
    the quality.* metrics, model_run and its val_loss."""
    from hyrax_mlops.stages.analyse import TAG_QUALITY_LABEL

    use_store()
    rows = []
    for rid in run_ids:
        run = get_run(rid, ("infer", "analyse"))
        stage = run.data.tags["hyrax.stage"]
        if stage == "analyse":
            infer = get_run(input_run(run, "embeddings"), "infer")
            label = run.data.params.get("analyse.label_column", "")
        else:
            infer = run
            label = run.data.tags.get(TAG_QUALITY_LABEL, "")
        model_run = infer.data.tags.get(TAG_INPUT + "model")
        row = {"run": rid, "stage": stage, "infer_run": infer.info.run_id, "label": label}
        row.update({q: run.data.metrics.get(f"quality.{q}", math.nan) for q in QUALITY})
        row.update({"model_run": model_run, "val_loss": _val_loss(model_run)})
        rows.append(row)
    table = pd.DataFrame(rows, columns=["run", "stage", "infer_run", "label", *QUALITY,
                                        "model_run", "val_loss"])
    table = table.sort_values(["knn_purity", "silhouette"], ascending=False,
                              na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table
