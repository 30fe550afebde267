"""`infer`: embed every object of a dataset with a trained model -> embeddings.parquet.

`infer.engine = "onnx"` runs the model's ONNX export (`onnx/model.onnx` of its train run,
`engine.onnx_export`) with onnxruntime over the same batches instead of PyTorch."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hyrax_mlops.config import Config, DataConfig, InferConfig
from hyrax_mlops.errors import ConfigError, LineageError
from hyrax_mlops.tracking import (
    DATASET_STAGES,
    ArtifactCache,
    StageRun,
    StageSpec,
    get_run,
    input_run,
    run_stage,
    say,
)

SECTIONS = ("infer",)
EMBEDDINGS = "embeddings.parquet"


def model_uri(cfg: Config, train_run_id: str | None) -> str:
    if cfg.infer.model:
        return cfg.infer.model
    if not train_run_id:
        raise ConfigError("infer needs a model: set infer.model=runs:/ID/model or "
                          "models:/NAME/VERSION, or pass the train run.")
    return f"runs:/{train_run_id}/model"


def run(cfg: Config, *, train_run: str | None = None, dataset: str | None = None,
        force: bool = False, parent_run_id: str | None = None) -> StageRun:
    from hyrax_mlops.engine.bundle import model_info
    from hyrax_mlops.tracking import use_store

    use_store()
    uri = model_uri(cfg, train_run)
    try:
        info = model_info(uri)
    except Exception as exc:
        raise LineageError(f"cannot find model '{uri}': {exc}. Fix: point infer.model at a "
                           "model a train run logged (runs:/TRAIN_RUN_ID/model, as its "
                           "summary prints), or a registered one (models:/NAME@ALIAS, "
                           "`hyrax-mlops register`).") from None
    source_run = info.run_id
    fingerprint = info.model_id
    if cfg.infer.engine == "onnx":  # before any run: the export must be there
        fingerprint += ":onnx:" + _onnx_export(cfg, uri, source_run)["sha256"][:16]
    if dataset is None:
        dataset = input_run(get_run(source_run, "train"), "dataset")
    get_run(dataset, DATASET_STAGES)
    spec = StageSpec("infer", SECTIONS, inputs={"dataset": dataset, "model": source_run},
                     fingerprint=fingerprint,
                     name=_run_name(uri, source_run) + ("-onnx" if cfg.infer.engine == "onnx"
                                                        else ""))

    def body(run_id: str) -> dict[str, str]:
        return _infer(cfg, uri, dataset, reading_settings(source_run), info)

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)


def _onnx_export(cfg: Config, uri: str, source_run: str) -> dict:
    """The model.json of the model's ONNX export; a LineageError saying how to make one when
    there is none, a ConfigError when the config asks for what the ONNX engine does not do."""
    from hyrax_mlops.engine.onnx_export import find_export, missing_export, require

    require("onnxruntime")
    if cfg.infer.backend == "ray":
        raise ConfigError("infer.engine=onnx runs in this process, not on Ray. Fix: set "
                          "infer.backend=local (or infer.engine=torch).")
    info = find_export(source_run)
    if info is None:
        raise LineageError(missing_export(uri, source_run))
    return info


def _run_name(uri: str, source_run: str) -> str:
    """"infer-" and what made the model: the train run's name without "train-", or the
    registered model ("infer-xdf-autoencoder-v1")."""
    import mlflow

    if uri.startswith("models:/"):
        return "infer-" + uri[len("models:/"):].strip("/").replace("/", "-v", 1).replace("@", "-")
    try:
        made_by = mlflow.get_run(source_run).info.run_name or ""
    except Exception:  # noqa: BLE001 - only a name
        made_by = ""
    return "infer-" + (made_by.split("-", 1)[1] if "-" in made_by else made_by or "model")


def reading_settings(model_run_id: str) -> DataConfig:
    """How a model's stamps are read (the [data] section its train run logged), labels left
    out: embedding needs none, and the labels file may be gone. Defaults for a model whose
    run logged no config."""
    from hyrax_mlops.tracking import config_of

    made_with = config_of(model_run_id)
    data = made_with.data if made_with is not None else DataConfig()
    return data.model_copy(update={"label_column": "", "labels_file": ""})


def how_embedded(infer_run) -> tuple[DataConfig, InferConfig]:
    """How an infer run read its stamps and batched them: what reading them again the same
    way needs (analyse's statistics), from the runs' logged configs, not today's."""
    from hyrax_mlops.tracking import config_of

    made_with = config_of(infer_run.info.run_id)
    return (reading_settings(input_run(infer_run, "model")),
            made_with.infer if made_with is not None else InferConfig())


def _infer(cfg: Config, uri: str, dataset_run_id: str, data: DataConfig,
           info=None) -> dict[str, str]:
    import mlflow
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine.bundle import load_bundle
    from hyrax_mlops.engine.inference import embed_all
    from hyrax_mlops.errors import DataError

    loaded = load_bundle(uri, info)
    provider = DataProvider(dataset_run_id, data, normalizer=loaded.normalizer,
                            cache=ArtifactCache.of(cfg))
    if list(provider.input_shape) != list(loaded.spec["input_shape"]):
        raise DataError(f"dataset stamps are {list(provider.input_shape)} but the model was "
                        f"trained on {loaded.spec['input_shape']}.")
    start = time.perf_counter()
    if cfg.infer.engine == "onnx":
        from hyrax_mlops.engine.onnx_export import ARTIFACT, embed_all_onnx, session

        sess, exported = session(loaded.run_id, cfg.infer.device)
        emb, probs = embed_all_onnx(
            sess, exported,
            provider.dataloader(None, batch_size=cfg.infer.batch_size, cache=False))
        mlflow.set_tag("hyrax.onnx", f"runs:/{loaded.run_id}/{ARTIFACT}")
    elif cfg.infer.backend == "ray":
        from hyrax_mlops.engine.ray_infer import embed_on_ray
        from hyrax_mlops.tracking import tracking_uri

        emb, probs = embed_on_ray(cfg, uri, provider, tracking_uri())
    else:
        from hyrax_mlops.engine.loop import resolve_device

        pin = resolve_device(cfg.infer.device).type == "cuda"
        emb, probs = embed_all(loaded.model,
                               provider.dataloader(None, batch_size=cfg.infer.batch_size,
                                                   cache=False, pin_memory=pin),
                               cfg.infer.device, cfg.infer.precision, cfg.infer.channels_last)
    embed_s = time.perf_counter() - start  # reading and the model, none of the bookkeeping
    # the catalog's own Arrow strings, not ten million Python ones
    ids = pa.array(provider.catalog["object_id"].astype(str)).cast(pa.string())
    if provider.data.streamed:  # a cutout that could not be fetched has no embedding
        failed = provider.data.stream.failed_objects
        if failed:
            keep = pc.invert(pc.is_in(ids, value_set=pa.array(sorted(failed), pa.string())))
            ids, keep = ids.filter(keep), keep.to_numpy(zero_copy_only=False)
            emb = emb[keep]
            probs = None if probs is None else probs[keep]
            mlflow.log_metric("stream_failed_objects", len(failed))
            say(f"infer: {len(failed)} object(s) whose cutout could not be fetched have no "
                "embedding (metric stream_failed_objects)")
    columns = {
        "object_id": ids,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()),
                                                       emb.shape[1]),
    }
    metadata, metrics = {}, {}
    if probs is not None:  # a classifier: probabilities per class and the most probable one
        classes = [str(c) for c in loaded.spec["params"].get("classes")
                   or range(probs.shape[1])]
        columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
            pa.array(probs.ravel(), pa.float32()), probs.shape[1])
        predicted = probs.argmax(axis=1)
        columns["predicted_class"] = pc.take(pa.array(classes, pa.string()),
                                             pa.array(predicted))
        metadata = {"hyrax.classes": ",".join(classes)}
        counts = np.bincount(predicted, minlength=len(classes))
        metrics = {f"n_predicted_{c}": int(counts[i]) for i, c in enumerate(classes)}
    table = pa.table(columns).replace_schema_metadata(metadata or None)
    with tempfile.TemporaryDirectory(prefix="hyrax-infer-") as tmp:
        path = Path(tmp) / EMBEDDINGS
        # dictionary encoding is for repeated values: tried on every float of the embeddings
        # it made the write 3x slower (29 ms -> 9 ms at 10k x 64) and the file a quarter larger
        pq.write_table(table, path, use_dictionary=[c for c in ("object_id", "predicted_class")
                                                    if c in columns])
        mlflow.log_artifact(str(path))
    mlflow.log_metrics({**metrics, "n_objects": len(ids), "embedding_dim": emb.shape[1],
                        "embed_seconds": embed_s,
                        "samples_per_s": len(ids) / embed_s if embed_s > 0 else 0.0})
    mlflow.set_tag("hyrax.model_uri", uri)
    return {"embeddings": EMBEDDINGS}


def read_embeddings(run_id: str, cache: ArtifactCache | None = None):
    """(object_ids, float32 (n, dim)) of an infer run, via the artifact cache."""
    return read_embeddings_file((cache or ArtifactCache.at()).fetch(run_id, EMBEDDINGS))


def read_embeddings_file(path: Path):
    """(object_ids, float32 (n, dim)) of an embeddings.parquet, read a row group at a time
    (a million rows as infer writes them) into arrays made once. Reading the whole table, then
    copying its vectors to float32, held 10M x 64 three times over; pyarrow's batch iterator
    kept every decoded batch of the vector column until the end."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    n, dim = parquet.metadata.num_rows, parquet.schema_arrow.field("embedding").type.list_size
    vectors, names, at = np.empty((n, dim), np.float32), [], 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=["object_id", "embedding"])
        names += table.column("object_id").chunks  # Arrow strings: a quarter of numpy's
        for chunk in table.column("embedding").chunks:
            vectors[at:at + len(chunk)] = chunk.flatten().to_numpy(
                zero_copy_only=False).reshape(len(chunk), dim)
            at += len(chunk)
    width = max((pc.max(pc.utf8_length(c)).as_py() or 1 for c in names), default=1)
    ids, at = np.empty(n, f"<U{width}"), 0
    for chunk in names:
        ids[at:at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        at += len(chunk)
    return ids, vectors
