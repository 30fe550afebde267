"""`export`: an infer run's results as one table for the tools astronomers already use
(TOPCAT, pandas, a notebook): each object's catalog row, its embedding and, given an analyse
run of the same embeddings, the analysis's per-object columns (outlier score, cluster, ...).
Written as FITS (TOPCAT opens it as it is) and Parquet, as artifacts of the export run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from hyrax_mlops.config import Config
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


def next_steps(run_id: str) -> list[str]:
    """What the terminal suggests after an export run."""
    return [f"mlflow artifacts download -r {run_id} -a export -d .   "
            "# export/objects.fits opens in TOPCAT"]


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
    from hyrax_mlops.tracking import fetch_artifacts

    ids, vectors = read_embeddings(embeddings, cfg)
    catalog = Dataset(fetch_artifacts(dataset, ARTIFACT_DIR, cfg)).catalog
    catalog = catalog.assign(object_id=catalog["object_id"].astype(str))  # ids stay text
    table = pd.DataFrame({"object_id": ids}).merge(catalog, on="object_id", how="left")
    if analysis:
        extra = pd.read_parquet(fetch_artifacts(analysis, COLUMNS, cfg))
        extra = extra.assign(object_id=extra["object_id"].astype(str))
        table = table.merge(extra, on="object_id", how="left", suffixes=("", "_analysis"))
    table["embedding"] = list(vectors)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        flat = table.drop(columns="embedding")
        flat.assign(**{f"emb_{i}": vectors[:, i] for i in range(vectors.shape[1])}).to_parquet(
            out / "objects.parquet", index=False)
        fits = Table.from_pandas(flat)
        fits["embedding"] = np.asarray(vectors, dtype=np.float32)  # one vector column
        fits.write(out / "objects.fits", format="fits")
        mlflow.log_artifacts(str(out), "export")
    mlflow.log_metric("n_objects", len(table))
    return {"table": f"{TABLE}.fits"}
