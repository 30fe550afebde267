"""Rank models by the quality of their latent space, with their validation loss beside it.

A lower loss does not make a more useful latent space: `compare` puts infer runs (or the
analyse runs that evaluated them) in order of `quality.knn_purity`, then
`quality.silhouette`, and shows each model's `val_loss` so the two can be told apart.

A run never analysed with "quality" is still scored when its dataset carries a known label
(the demo's `colour`, measured from the image): the same kNN purity, chance level and
silhouette, measured on its embeddings when `compare` runs (`scored` = "compare"; nothing is
logged). So the demo and its peeled retrains compare out of the box.
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


def measure_quality(infer_run_id: str, dataset_run_id: str) -> tuple[str, dict[str, float]]:
    """(label, quality metrics) of an infer run's embeddings against its dataset's own label,
    measured now with the `[analyse]` defaults; ("", {}) when the dataset has no such label."""
    import numpy as np

    from hyrax_mlops.analysis.quality import chance_purity, purity_per_object, silhouette
    from hyrax_mlops.config import AnalyseConfig, Config
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.stages.infer import read_embeddings
    from hyrax_mlops.tracking import ArtifactCache

    cfg = Config()
    catalog = Dataset(ArtifactCache.of(cfg).fetch(dataset_run_id, ARTIFACT_DIR)).catalog
    from hyrax_mlops.stages.analyse import fallback_label

    label = fallback_label(catalog.columns)
    if label is None:
        return "", {}
    ids, vectors = read_embeddings(infer_run_id, ArtifactCache.of(cfg))
    column = catalog.set_index(catalog["object_id"].astype(str))[label].reindex(ids)
    has = column.notna().to_numpy()
    labels = column[has].astype(str).to_numpy()
    if len(np.unique(labels)) < 2 or len(labels) < 3:
        return label, {}
    a = AnalyseConfig()
    x = vectors[has]
    found = {"knn_purity": float(purity_per_object(x, labels, a.quality_k).mean()),
             "knn_purity_chance": chance_purity(labels)}
    score = silhouette(x, labels, a.seed)
    if score is not None:
        found["silhouette"] = score
    return label, found


def latest_analysis(infer_run_id: str):
    """The newest FINISHED analyse run of these embeddings that measured their quality (its
    metrics stay on it; compare reads them there), or None."""
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.tracking import TAG_STAGE

    found = MlflowClient().search_runs(
        [get_run(infer_run_id).info.experiment_id],
        f"tags.`{TAG_STAGE}` = 'analyse' AND tags.`{TAG_INPUT}embeddings` = '{infer_run_id}' "
        "AND attributes.status = 'FINISHED' AND metrics.`quality.knn_purity` >= 0",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def compare_runs(run_ids: Iterable[str]) -> pd.DataFrame:
    """One row per run, best latent space first: rank, run, stage, infer_run, label, scored
    (who measured the quality: "analyse" logged it, "compare" measured it now against the
    dataset's known label, "" none), the quality.* metrics, model_run and its val_loss."""
    use_store()
    rows = []
    for rid in run_ids:
        run = get_run(rid, ("infer", "analyse"))
        stage = run.data.tags["hyrax.stage"]
        if stage == "analyse":
            infer, scored_by = get_run(input_run(run, "embeddings"), "infer"), run
        else:  # an infer run: its newest analysis of quality, joined here
            infer, scored_by = run, latest_analysis(rid)
        metrics = scored_by.data.metrics if scored_by is not None else {}
        label = scored_by.data.params.get("analyse.label_column", "") if scored_by else ""
        model_run = infer.data.tags.get(TAG_INPUT + "model")
        row = {"run": rid, "stage": stage, "infer_run": infer.info.run_id, "label": label,
               "scored": "analyse"}
        row.update({q: metrics.get(f"quality.{q}", math.nan) for q in QUALITY})
        if math.isnan(row["knn_purity"]):  # never analysed with "quality": its known label
            found_label, found = measure_quality(infer.info.run_id,
                                                 input_run(infer, "dataset"))
            if found:
                row.update(found, label=found_label, scored="compare")
            else:
                row["scored"] = ""
        row.update({"model_run": model_run, "val_loss": _val_loss(model_run)})
        rows.append(row)
    table = pd.DataFrame(rows, columns=["run", "stage", "infer_run", "label", "scored",
                                        *QUALITY, "model_run", "val_loss"])
    table = table.sort_values(["knn_purity", "silhouette"], ascending=False,
                              na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table
