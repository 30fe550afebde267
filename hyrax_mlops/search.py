"""Nearest neighbours of an object or a vector, from the index a run points to.

`run` may be an index run, a pipeline run (its index stage is used) or an infer run
(the newest index run of its embeddings). Results come back with the catalog rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hyrax_mlops.config import Config
from hyrax_mlops.errors import HyraxError, LineageError
from hyrax_mlops.tracking import (
    TAG_INPUT,
    TAG_STAGE,
    TAG_STAGE_RUN,
    fetch_artifacts,
    get_run,
    input_run,
    use_store,
)


def _index_runs(run_id: str) -> list:
    """Index runs that could serve `run_id`, best first."""
    run = get_run(run_id)
    stage = run.data.tags.get(TAG_STAGE)
    if stage == "index":
        return [run]
    if stage == "pipeline":
        return [get_run(run.data.tags[TAG_STAGE_RUN + "index"], "index")]
    if stage == "infer":
        from mlflow.tracking import MlflowClient

        found = MlflowClient().search_runs(
            [run.info.experiment_id],
            f"tags.`{TAG_STAGE}` = 'index' AND tags.`{TAG_INPUT}embeddings` = '{run_id}' "
            "AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=20)
        if found:  # newest first; an index whose store is gone gives way to an older one
            return found
    raise LineageError(f"run '{run_id}' ({stage}) has no index: pass an index or pipeline run.")


class Searcher:
    """An opened index plus its catalog, for repeated queries."""

    def __init__(self, run_id: str, cfg: Config | None = None) -> None:
        from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
        from hyrax_mlops.stages.index import TAG_COLLECTION, TAG_LOCATION
        from hyrax_mlops.vectors import VECTOR_BACKENDS

        self.cfg = cfg or Config()
        use_store()
        first_error = None
        for run in _index_runs(run_id):
            location = json.loads(run.data.tags[TAG_LOCATION])
            backend = VECTOR_BACKENDS.get(location["backend"])
            try:
                self.index = backend.reopen(location, run.data.tags[TAG_COLLECTION])
                break
            except Exception as exc:
                first_error = first_error or LineageError(
                    f"the index of run {run.info.run_id} is gone from {location} ({exc}). "
                    "Fix: re-run `hyrax-mlops index --force`.")
        else:
            raise first_error
        self.index_run_id = run.info.run_id
        dataset = input_run(run, "dataset")
        self.catalog = Dataset(fetch_artifacts(dataset, ARTIFACT_DIR, self.cfg)).catalog

    def by_vector(self, vectors: np.ndarray, k: int = 10) -> list[pd.DataFrame]:
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return [self._table(hits) for hits in self.index.query(vectors, k)]

    def by_id(self, object_ids: Sequence[str], k: int = 10) -> list[pd.DataFrame]:
        try:
            vectors = self.index.get_vectors([str(i) for i in object_ids])
        except KeyError as exc:
            raise HyraxError(f"{exc.args[0]} (index of run {self.index_run_id})") from None
        return self.by_vector(vectors, k)

    def _table(self, hits: list[tuple[str, float]]) -> pd.DataFrame:
        res = pd.DataFrame(hits, columns=["object_id", "distance"])
        res.insert(0, "rank", np.arange(1, len(res) + 1))
        return res.merge(self.catalog, on="object_id", how="left")


def search_by_id(run_id: str, object_id: str, k: int = 10, cfg: Config | None = None):
    """The k nearest neighbours of `object_id` (itself first), with distances and catalog rows."""
    return Searcher(run_id, cfg).by_id([object_id], k)[0]


def search_by_vector(run_id: str, vector, k: int = 10, cfg: Config | None = None):
    """The k nearest neighbours of an embedding vector, with distances and catalog rows."""
    return Searcher(run_id, cfg).by_vector(np.asarray(vector), k)[0]
