"""`export`: an infer run's results as one table for the tools astronomers already use
(TOPCAT, pandas, a notebook): each object's catalog row, its embedding and, given an analyse
run of the same embeddings, the analysis's per-object columns (outlier score, cluster, ...).
Written as FITS (TOPCAT opens it as it is) and Parquet, as artifacts of the export run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from hyrax_mlops.config import Config
from hyrax_mlops.summaries import formatter
from hyrax_mlops.tracking import (
    StageRun,
    StageSpec,
    get_run,
    input_run,
    run_of_input,
    run_stage,
)

SECTIONS: tuple[str, ...] = ()  # reads no config: the runs it takes identify it
TABLE = "export/objects"  # .fits and .parquet


def check(cfg: Config) -> None:
    """Nothing in the config to check."""


@formatter("export")
def _summary(run) -> list[str]:
    m = run.data.metrics
    return [f"{int(m.get('n_objects', 0))} objects, {int(m.get('n_columns', 0))} columns "
            "(catalog, analysis) + the embedding: export/objects.fits (embedding as one vector "
            "column), export/objects.parquet (emb_0, emb_1, ... columns)"]


def next_steps(run_id: str) -> list[str]:
    """Where the table is: its own path in a local store, else the download command with the
    store named (it works from any folder)."""
    from hyrax_mlops.redact import redact
    from hyrax_mlops.tracking import tracking_uri
    from hyrax_mlops.tracking.artifacts import local_artifact

    local = local_artifact(run_id, f"{TABLE}.fits")
    if local is not None:
        return [f"open {local}   # in TOPCAT (or astropy.table.Table.read)"]
    return [f"MLFLOW_TRACKING_URI={redact(tracking_uri())} mlflow artifacts download "
            f"-r {run_id} -a export -d .   # export/objects.fits opens in TOPCAT"]


def run(cfg: Config, embeddings: str, *, analysis: str | None = None, force: bool = False,
        parent_run_id: str | None = None) -> StageRun:
    dataset = input_run(get_run(embeddings, "infer"), "dataset")
    inputs = {"embeddings": embeddings, "dataset": dataset}
    if analysis:
        inputs["analysis"] = run_of_input(analysis, "analyse", "embeddings", embeddings
                                          ).info.run_id
    spec = StageSpec("export", SECTIONS, inputs=inputs,
                     name="export" + ("-analysed" if analysis else ""))
    return run_stage(spec, cfg, lambda run_id: _export(cfg, embeddings, dataset, analysis),
                     force=force, parent_run_id=parent_run_id)


def _export(cfg: Config, embeddings: str, dataset: str, analysis: str | None) -> dict[str, str]:
    import mlflow
    import pandas as pd
    from astropy.table import Table

    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.stages.analyse import COLUMNS
    from hyrax_mlops.stages.infer import read_embeddings
    from hyrax_mlops.tracking import ArtifactCache

    ids, vectors = read_embeddings(embeddings, ArtifactCache.of(cfg))
    catalog = Dataset(ArtifactCache.of(cfg).fetch(dataset, ARTIFACT_DIR)).catalog
    catalog = catalog.assign(object_id=catalog["object_id"].astype(str))  # ids stay text
    table = pd.DataFrame({"object_id": ids}).merge(catalog, on="object_id", how="left")
    if analysis:
        extra = pd.read_parquet(ArtifactCache.of(cfg).fetch(analysis, COLUMNS))
        extra = extra.assign(object_id=extra["object_id"].astype(str))
        table = table.merge(extra, on="object_id", how="left", suffixes=("", "_analysis"))
    images = [c for c in table.columns if pd.api.types.is_string_dtype(table[c])
              and table[c].dropna().astype(str).str.startswith("data:image/").any()]
    table = table.drop(columns=images)  # the app's thumbnails (PNG data URIs): not data
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        table.assign(**{f"emb_{i}": vectors[:, i] for i in range(vectors.shape[1])}).to_parquet(
            out / "objects.parquet", index=False)
        fits = Table.from_pandas(table)
        fits["embedding"] = np.asarray(vectors, dtype=np.float32)  # one vector column
        fits.meta.update({"HYRAXEMB": embeddings, "HYRAXDS": dataset,
                          "HYRAXANA": analysis or "", "ORIGIN": "hyrax-mlops export"})
        fits.write(out / "objects.fits", format="fits")
        mlflow.log_artifacts(str(out), "export")
    mlflow.log_metrics({"n_objects": len(table), "n_columns": len(table.columns)})
    return {"table": f"{TABLE}.fits"}
