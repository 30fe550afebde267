"""`export`: an infer run's results as one table for the tools astronomers already use
(TOPCAT, pandas, a notebook): each object's catalog row, its embedding and, given an analyse
run of the same embeddings, the analysis's per-object columns (outlier score, cluster, ...).
Written as FITS (TOPCAT opens it as it is) and Parquet, as artifacts of the export run.

`export_onnx` (`hyrax-mlops export TRAIN_RUN --onnx`): a train run's model as ONNX, written
beside its MLflow model as artifacts `onnx/model.onnx` and `onnx/model.json` of that train run
(no run of its own: the export belongs to the model), after onnxruntime and PyTorch agree on
real objects of its dataset (`engine.onnx_export`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
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


@dataclass
class OnnxExported:
    """Where a train run's ONNX export is and how close it came to PyTorch."""

    run_id: str
    info: dict
    reused: bool

    def __str__(self) -> str:
        from hyrax_mlops.engine.onnx_export import ARTIFACT

        check = self.info["check"]
        sizes = ", ".join(str(s) for s in check["batch_sizes"])
        return (f"{'kept   ' if self.reused else 'exported'} {ARTIFACT} of run {self.run_id}: "
                f"max |onnx - torch| = {check['max_abs_diff']:.2g} on {check['n_objects']} real "
                f"objects, batches of {sizes} (tolerance {check['tolerance']:.2g}); inputs "
                f"{', '.join(i['name'] for i in self.info['inputs'])}, outputs "
                f"{', '.join(o['name'] for o in self.info['outputs'])}, opset "
                f"{self.info['opset']}" + ("  (--force exports again)" if self.reused else ""))

    def next_steps(self) -> list[str]:
        """The infer command that runs the export."""
        return [f"hyrax-mlops infer --train-run {self.run_id} --set infer.engine=onnx"]


def export_onnx(cfg: Config, train_run: str, *, force: bool = False) -> OnnxExported:
    """Export a train (or tune) run's model to ONNX as artifacts `onnx/` of that run, checked
    with onnxruntime against PyTorch on real objects of its dataset; an export already there
    is kept unless `force`."""
    import mlflow

    from hyrax_mlops.engine import onnx_export
    from hyrax_mlops.engine.bundle import load_bundle
    from hyrax_mlops.errors import LineageError
    from hyrax_mlops.stages.infer import reading_settings
    from hyrax_mlops.tracking import use_store

    use_store()
    onnx_export.require("onnx", "onnxscript", "onnxruntime")
    run = get_run(train_run, ("train", "tune"))
    existing = onnx_export.find_export(train_run)
    if existing is not None and not force:
        return OnnxExported(train_run, existing, reused=True)
    uri = f"runs:/{train_run}/model"
    try:
        mlflow.models.get_model_info(uri)
    except Exception:
        raise LineageError(f"run '{train_run}' logged no model (runs:/{train_run}/model): "
                           "pass a train run that finished training.") from None
    loaded = load_bundle(uri)
    onnx_export.input_keys(loaded.model)  # refuse an unsupported model before reading data
    dataset = input_run(run, "dataset")
    exported = _export_checked(cfg, loaded, dataset, reading_settings(train_run), train_run,
                               uri)
    return OnnxExported(train_run, exported.info, reused=False)


def _export_checked(cfg: Config, loaded, dataset: str, data, run_id: str, uri: str):
    """Export and check on real objects of `dataset`, read as infer reads them; log it."""
    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine import onnx_export
    from hyrax_mlops.tracking import ArtifactCache

    provider = DataProvider(dataset, data, normalizer=loaded.normalizer,
                            cache=ArtifactCache.of(cfg))
    with tempfile.TemporaryDirectory(prefix="hyrax-onnx-") as tmp:
        exported = onnx_export.export(
            loaded.model, onnx_export.real_batch(provider), Path(tmp),
            normalizer=loaded.normalizer,
            source={"run_id": run_id, "model_uri": uri, "dataset_run": dataset})
        onnx_export.log_export(run_id, exported)
    return exported
