"""`index`: upsert an infer run's embeddings into a vector store, with catalog metadata; with
`index.vectors = "auto"` and an analyse run of the same embeddings that measured stamp
statistics, each vector is the embedding (centred, scaled) joined with its anomaly signature
(analysis.signature), so look-alikes of an artefact are artefacts of its kind."""

from __future__ import annotations

import json

import numpy as np

from hyrax_mlops.config import Config
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.tracking import (
    ArtifactCache,
    StageRun,
    StageSpec,
    get_run,
    input_run,
    run_of_input,
    run_stage,
)
from hyrax_mlops.vectors import VECTOR_BACKENDS, collection_name, legacy_collection_name
from hyrax_mlops.vectors.base import FrameRecords

SECTIONS = ("index",)
TAG_LOCATION = "hyrax.index.location"
TAG_COLLECTION = "hyrax.index.collection"
TAG_VECTORS = "hyrax.index.vectors"  # "embeddings" or "joined" (with the anomaly signature)
_RECALL_QUERIES = 200
INDEX_JSON = "index.json"  # the run's artifact: collection, metric, location, signature


def backend(cfg: Config):
    """The backend class `index.backend` names, checked against what it declares it can do
    (`capabilities`: its metrics)."""
    try:
        cls = VECTOR_BACKENDS.get(cfg.index.backend)
    except KeyError as exc:
        raise ConfigError(f"config key 'index.backend': {exc}") from None
    metrics = cls.capabilities.get("metrics")
    if metrics is not None and cfg.index.metric not in metrics:
        raise ConfigError(f"config key 'index.metric' = '{cfg.index.metric}': backend "
                          f"'{cfg.index.backend}' offers {', '.join(metrics)}")
    return cls


def measured_statistics(analyse_run) -> bool:
    """Whether an analyse run measured stamp statistics (not only the reconstruction error)."""
    from hyrax_mlops.stages.analyse import STATISTICS_METRIC

    return bool(analyse_run.data.metrics.get(STATISTICS_METRIC))


def statistics_run(cfg: Config, infer_run_id: str, analyse_run_id: str | None) -> str | None:
    """The analyse run whose stamp statistics join the vectors: none with `index.vectors =
    "embeddings"`; else `analyse_run_id` (it must have analysed these embeddings and measured
    statistics), or by default the newest FINISHED analyse run of these embeddings that did."""
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.errors import LineageError
    from hyrax_mlops.stages.analyse import STATISTICS_METRIC
    from hyrax_mlops.tracking import TAG_INPUT, TAG_STAGE

    if cfg.index.vectors == "embeddings":
        return None
    if analyse_run_id:
        run = run_of_input(analyse_run_id, "analyse", "embeddings", infer_run_id)
        if not measured_statistics(run):
            raise LineageError(f"analyse run {analyse_run_id} measured no stamp statistics "
                               "(its outlier methods were neither \"residual\" nor \"pixels\"); "
                               "index the embeddings alone with index.vectors=embeddings.")
        return analyse_run_id
    found = MlflowClient().search_runs(
        [get_run(infer_run_id).info.experiment_id],
        f"tags.`{TAG_STAGE}` = 'analyse' AND tags.`{TAG_INPUT}embeddings` = '{infer_run_id}' "
        f"AND attributes.status = 'FINISHED' AND metrics.{STATISTICS_METRIC} > 0",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def run(cfg: Config, embeddings: str, *, analysis: str | None = None,
        force: bool = False, parent_run_id: str | None = None) -> StageRun:
    backend_cls = backend(cfg)
    dataset_run_id = input_run(get_run(embeddings, "infer"), "dataset")
    statistics = statistics_run(cfg, embeddings, analysis)
    name = collection_name(embeddings, cfg.index, statistics)
    inputs = {"embeddings": embeddings, "dataset": dataset_run_id}
    if statistics:
        inputs["statistics"] = statistics
    spec = StageSpec("index", SECTIONS, inputs=inputs,
                     name=f"index-{cfg.index.backend}-{cfg.index.metric}"
                          + ("-joined" if statistics else ""))

    def still_there(run) -> bool:
        """A reused index run is only good if its collection still holds every vector. A
        collection the backend says is gone means re-index; a store that cannot be reached
        raises (IndexUnreachable): an outage or a bad token is not a reason to rebuild."""
        location = json.loads(run.data.tags.get(TAG_LOCATION, "{}"))
        recorded = recorded_collection(run)
        size = backend_cls.exists(location, recorded) if location else None
        return size is not None and size == run.data.metrics.get("n_vectors")

    def body(run_id: str) -> None:
        _index(cfg, backend_cls, name, embeddings, dataset_run_id, statistics)

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id,
                     still_valid=still_there)


def recorded_collection(run) -> str:
    """The collection an index run wrote (its tag), or the name runs used before the tag."""
    return run.data.tags.get(TAG_COLLECTION) or legacy_collection_name(
        run.data.tags.get("hyrax.input.embeddings", ""))


def _metadata(cfg: Config, dataset_run_id: str, ids: np.ndarray) -> FrameRecords:
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.tracking import ArtifactCache

    catalog = Dataset(ArtifactCache.of(cfg).fetch(dataset_run_id, ARTIFACT_DIR)).catalog
    cols = cfg.index.metadata_columns or list(catalog.columns)
    unknown = [c for c in cols if c not in catalog.columns]
    if unknown:
        raise ConfigError(f"index.metadata_columns names columns not in the catalog: "
                          f"{', '.join(unknown)} (catalog has: {', '.join(catalog.columns)})")
    if len(catalog) == len(ids) and bool((catalog["object_id"].to_numpy(ids.dtype) == ids).all()):
        return FrameRecords(catalog[cols])  # in infer's order already: no lookup of 10M ids
    rows = catalog.set_index("object_id", drop=False)[cols].loc[ids]
    return FrameRecords(rows.reset_index(drop=True))


def joined_vectors(cfg: Config, ids: np.ndarray, embeddings: np.ndarray,
                   analyse_run_id: str) -> tuple[np.ndarray, dict | None]:
    """The embeddings joined with the anomaly signature of the analyse run's statistics (in
    the order of `ids`), and the signature's recipe for queries measured later."""
    import pandas as pd

    from hyrax_mlops.analysis.signature import Signature
    from hyrax_mlops.stages.analyse import STATISTICS_TABLE
    from hyrax_mlops.tracking import ArtifactCache

    table = pd.read_parquet(ArtifactCache.of(cfg).fetch(analyse_run_id, STATISTICS_TABLE))
    table = table.set_index(table["object_id"].astype(str)).reindex(ids.astype(str))
    signature = Signature.fit(table, embeddings)
    if not signature.names:  # an analyse run that measured the reconstruction error alone
        return embeddings, None
    return signature.join(embeddings, table), {
        **signature.to_dict(), "embedding_dim": int(embeddings.shape[1]),
        "statistics_run": analyse_run_id}


def _index(cfg: Config, backend_cls, name: str, infer_run_id: str, dataset_run_id: str,
           statistics_run_id: str | None) -> None:
    import time

    import mlflow

    from hyrax_mlops.stages.infer import read_embeddings
    from hyrax_mlops.vectors.exact import recall_at_k

    ids, vectors = read_embeddings(infer_run_id, ArtifactCache.of(cfg))
    signature = None
    if statistics_run_id:
        vectors, signature = joined_vectors(cfg, ids, vectors, statistics_run_id)
    meta = _metadata(cfg, dataset_run_id, ids)
    index = backend_cls.open(cfg.index, name, create=True)
    start = time.perf_counter()
    index.upsert(ids, vectors, meta)  # backends take them a chunk at a time
    elapsed = time.perf_counter() - start
    del meta  # the catalog: 2 GB at 10M, not needed to measure recall
    k = min(10, len(ids))
    rng = np.random.default_rng(0)
    queries = rng.choice(len(ids), size=min(_RECALL_QUERIES, len(ids)), replace=False)
    found = [[i for i, _ in hits] for hits in index.query(vectors[queries], k)]
    recall = recall_at_k(vectors, vectors[queries], found, k, cfg.index.metric, ids=ids)
    location = index.location()
    mlflow.set_tags({TAG_LOCATION: json.dumps(location), TAG_COLLECTION: name,
                     TAG_VECTORS: "joined" if signature else "embeddings"})
    mlflow.log_dict({"collection": name, "metric": cfg.index.metric,
                     "identity": {"backend": cfg.index.backend,
                                  **backend_cls.identity(cfg.index)}, **location,
                     **({"signature": signature} if signature else {})},
                    INDEX_JSON)
    mlflow.log_metrics({"n_vectors": index.count(), "insert_s": elapsed,
                        f"recall_at_{k}": recall})
