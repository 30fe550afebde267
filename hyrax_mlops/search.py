"""Nearest neighbours of an object, a set of examples, an external cutout or a vector, from
the index a run points to.

`run` may be an index run, a pipeline run (its index stage is used) or an infer run
(the newest index run of its embeddings). Results come back with the catalog rows and, when
`analyse` runs of the same embeddings exist, their per-object columns (outlier score, cluster,
crossmatched reference label), the newest value of each column.

An index whose vectors are joined with the anomaly signature (analysis.signature) answers the
same queries: a stored object's vector already holds it; an external cutout's is measured with
the run's model and scaled as the indexed objects were; a plain embedding vector is taken as
an object that departs in nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hyrax_mlops.config import Config
from hyrax_mlops.errors import HyraxError, LineageError
from hyrax_mlops.redact import redact
from hyrax_mlops.tracking import (
    TAG_INPUT,
    TAG_STAGE,
    TAG_STAGE_RUN,
    ArtifactCache,
    get_run,
    input_run,
    use_store,
)

MAX_ANALYSE_RUNS = 50  # the newest analyse runs of one infer run whose columns are merged


# what a model reads, as a sentence says it
NOUNS = {"image": "images", "spectrum": "spectra", "lightcurve": "light curves",
         "tabular": "catalog features"}

def analyse_run_ids(embeddings_run_id: str | None) -> tuple[str, ...]:
    """The FINISHED analyse runs of these embeddings, newest first (at most MAX_ANALYSE_RUNS):
    what `analysis_columns` merges, and what a cached merge must be redone for."""
    from mlflow.tracking import MlflowClient

    if not embeddings_run_id:
        return ()
    exp = get_run(embeddings_run_id).info.experiment_id
    found = MlflowClient().search_runs(
        [exp], f"tags.`{TAG_STAGE}` = 'analyse' AND "
        f"tags.`{TAG_INPUT}embeddings` = '{embeddings_run_id}' AND "
        "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=MAX_ANALYSE_RUNS)
    return tuple(r.info.run_id for r in found)


def analysis_columns(embeddings_run_id: str | None, cache: ArtifactCache,
                     runs: tuple[str, ...] | None = None) -> pd.DataFrame | None:
    """Every per-object column (outlier score, cluster, reference label, ...) that the
    FINISHED analyse runs of these embeddings made (`runs`, newest first; default
    `analyse_run_ids`), merged: one row per object_id, and for each column the values of the
    newest run that made it. So a later run of one analysis (quality only, say) keeps the
    outlier scores and clusters of an earlier one. None when no analyse run made any."""
    merged: pd.DataFrame | None = None
    for run_id in analyse_run_ids(embeddings_run_id) if runs is None else runs:
        try:  # newest first: a column already taken is not overwritten
            path = cache.fetch(run_id, "analysis/columns.parquet")
        except Exception:  # an analyse run without per-object columns
            continue
        table = pd.read_parquet(path)
        table["object_id"] = table["object_id"].astype(str)
        table = table.drop_duplicates("object_id").set_index("object_id")
        if merged is None:
            merged = table
            continue
        new = [c for c in table.columns if c not in merged.columns]
        if new:
            merged = merged.join(table[new], how="outer")
    return None if merged is None else merged.reset_index()


def with_analysis_columns(catalog: pd.DataFrame, embeddings_run_id: str | None,
                          cache: ArtifactCache, runs: tuple[str, ...] | None = None,
                          ) -> pd.DataFrame:
    """`catalog` plus the per-object columns of the analyse runs of these embeddings
    (`analysis_columns`: newest value per column), when there are some."""
    extra = analysis_columns(embeddings_run_id, cache, runs)
    if extra is None:
        return catalog
    return catalog.merge(extra, on="object_id", how="left", suffixes=("", "_analysis"))


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
        from hyrax_mlops.stages.index import TAG_LOCATION, recorded_collection
        from hyrax_mlops.vectors import VECTOR_BACKENDS, CollectionNotFound

        self.cache = ArtifactCache.of(cfg or Config())  # where a remote store's files go
        use_store()
        first_error = None
        for run in _index_runs(run_id):
            location = json.loads(run.data.tags[TAG_LOCATION])
            backend = VECTOR_BACKENDS.get(location["backend"])
            name = recorded_collection(run)  # never recomputed: the run says what it wrote
            try:  # a store that can't be reached raises IndexUnreachable: not "gone"
                self.index = backend.reopen(location, name)
                break
            except CollectionNotFound as exc:
                where = redact(str(location.get("url") or location.get("uri")
                                   or location.get("path")))
                first_error = first_error or LineageError(
                    f"the index of run {run.info.run_id} is gone from {where} ({exc}). "
                    "Fix: re-run `hyrax-mlops index --force`.")
        else:
            raise first_error
        self.collection = name
        self.metric = run.data.params.get("index.metric")  # what its distances mean
        self.index_run_id = run.info.run_id
        self.signature, self.embedding_dim = _signature(run, self.cache)
        self.embeddings_run_id = run.data.tags.get(TAG_INPUT + "embeddings")
        dataset = input_run(run, "dataset")
        self.catalog = Dataset(self.cache.fetch(dataset, ARTIFACT_DIR)).catalog
        self.catalog = with_analysis_columns(self.catalog, self.embeddings_run_id, self.cache)

    def prewarm(self) -> None:
        """Load what the index's queries read into memory now (a long-lived caller, the app,
        does it in the background when it opens an index): answers are the same without."""
        self.index.prewarm()

    def by_vector(self, vectors: np.ndarray, k: int = 10) -> list[pd.DataFrame]:
        """Neighbours of vectors as the index holds them or, for a joined index, of plain
        embeddings (taken as departing in nothing: the signature's part is zeros)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if self.signature is not None and vectors.shape[1] == self.embedding_dim:
            vectors = self.signature.join(vectors, None)
        most = self.index.capabilities.get("max_k")  # what the backend says it can return
        k = min(int(k), most) if most else int(k)
        return [self._table(hits) for hits in self.index.query(vectors, k)]

    def by_id(self, object_ids: Sequence[str], k: int = 10) -> list[pd.DataFrame]:
        try:
            vectors = self.index.get_vectors([str(i) for i in object_ids])
        except KeyError as exc:
            raise HyraxError(f"{exc.args[0]} (index of run {self.index_run_id})") from None
        tables = self.by_vector(vectors, k)
        if self.metric not in ("cosine", "l2"):  # ip: a longer vector may be nearer than itself
            return tables
        return [itself_first(table, str(oid), lambda oid=str(oid): self._table([(oid, 0.0)]))
                for table, oid in zip(tables, object_ids, strict=True)]

    def by_examples(self, object_ids: Sequence[str], k: int = 10, *,
                    each: bool = False) -> list[pd.DataFrame]:
        """Objects most like a set of examples: the neighbours of their centroid (one table,
        the examples themselves left out), or of each example (`each=True`)."""
        if each:
            return self.by_id(object_ids, k)
        ids = [str(i) for i in object_ids]
        try:
            vectors = self.index.get_vectors(ids)
        except KeyError as exc:
            raise HyraxError(f"{exc.args[0]} (index of run {self.index_run_id})") from None
        centroid = vectors.mean(axis=0, keepdims=True)
        table = self.by_vector(centroid, k + len(ids))[0]
        table = table[~table["object_id"].isin(ids)].head(k).reset_index(drop=True)
        table["rank"] = np.arange(1, len(table) + 1)
        return [table]

    def _model(self):
        """(the loaded model that made this index's embeddings, its train run id)."""
        from hyrax_mlops.engine.bundle import load_bundle

        if not self.embeddings_run_id:
            raise LineageError(f"index run {self.index_run_id} names no embeddings run.")
        model_run = input_run(get_run(self.embeddings_run_id), "model")
        uri = get_run(model_run).data.tags.get("hyrax.model_uri") or f"runs:/{model_run}/model"
        return load_bundle(uri), model_run

    def embed_cutout(self, path: str) -> np.ndarray:
        """An external cutout (FITS: an image, a (bands, h, w) cube, or one HDU per band named
        like the dataset's bands) embedded with the model that made this index."""
        from hyrax_mlops.data.fits_cutouts import read_cutout
        from hyrax_mlops.engine.inference import embed_cutouts

        loaded, model_run = self._model()
        shape = tuple(loaded.spec["input_shape"])
        try:
            cube = read_cutout(path)
        except Exception as exc:
            raise HyraxError(f"cannot read cutout '{path}': {exc}") from None
        if cube.shape != shape:
            raise HyraxError(f"cutout '{path}' is {list(cube.shape)}; the model of run "
                             f"{model_run} takes {list(shape)} (bands, h, w)")
        vector, _ = embed_cutouts(loaded.model, loaded.normalizer, cube[None])  # (1, dim)
        if self.signature is None:
            return vector
        return self.signature.join(vector, cutout_statistics(loaded, cube))

    def embed_series(self, *, spectrum: str | None = None, lightcurve: str | None = None
                     ) -> np.ndarray:
        """A spectrum and/or a light curve (files as `ingest` reads them: FITS or CSV spectra,
        CSV or Parquet light curves) embedded with the model that made this index, the
        modalities it does not get masked out as for an object that lacks them."""
        from hyrax_mlops.data.series import read_lightcurve, read_spectrum
        from hyrax_mlops.engine.inputs import embed_raw, model_kinds

        given = {kind: path for kind, path in (("spectrum", spectrum),
                                               ("lightcurve", lightcurve)) if path}
        if not given:
            raise HyraxError("give a spectrum or a light curve file to search by")
        read = {"spectrum": read_spectrum, "lightcurve": read_lightcurve}
        tables = {}
        for kind, path in given.items():  # the file first: a typo is not the model's fault
            if not Path(path).is_file():
                raise HyraxError(f"{kind} '{path}' is not a file")
            try:
                tables[kind] = [read[kind](Path(path))]
            except Exception as exc:
                raise HyraxError(f"cannot read {kind} '{path}': {exc}") from None
        loaded, model_run = self._model()
        kinds = model_kinds(loaded.model)
        unread = [NOUNS[kind] for kind in given if kind not in kinds]
        if unread:
            raise HyraxError(f"the model of run {model_run} ({loaded.spec['name']}) reads "
                             f"{' and '.join(NOUNS[k] for k in kinds)}, not "
                             f"{' or '.join(unread)}: search with an index of a model trained "
                             "on them (model.name = \"fusion_classifier\" on a dataset with "
                             "spectra or light curves)")
        if "image" in kinds:
            raise HyraxError(f"the model of run {model_run} reads images too: search it by a "
                             "cutout (--fits)")
        vector, _ = embed_raw(loaded.model, loaded.normalizer, 1, spectra=tables.get("spectrum"),
                              lightcurves=tables.get("lightcurve"))
        # an index joined with stamp statistics: a series has none, so none stands out
        return vector if self.signature is None else self.signature.join(vector, None)

    def by_cutout(self, path: str, k: int = 10) -> pd.DataFrame:
        """Neighbours of an external FITS cutout, embedded with the run's own model."""
        return self.by_vector(self.embed_cutout(path), k)[0]

    def by_spectrum(self, path: str, k: int = 10) -> pd.DataFrame:
        """Neighbours of a spectrum file, embedded with the run's own model."""
        return self.by_vector(self.embed_series(spectrum=path), k)[0]

    def by_lightcurve(self, path: str, k: int = 10) -> pd.DataFrame:
        """Neighbours of a light-curve file, embedded with the run's own model."""
        return self.by_vector(self.embed_series(lightcurve=path), k)[0]

    def _table(self, hits: list[tuple[str, float]]) -> pd.DataFrame:
        res = pd.DataFrame(hits, columns=["object_id", "distance"])
        if self.metric in ("cosine", "l2"):  # never below 0: -1e-7 is rounding, not a distance
            res["distance"] = res["distance"].clip(lower=0)
        res.insert(0, "rank", np.arange(1, len(res) + 1))
        return res.merge(self.catalog, on="object_id", how="left")


def itself_first(table: pd.DataFrame, object_id: str,
                 own: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The neighbours of `object_id` with the object itself first, at distance 0 (`own()`:
    its row, made only when the index left it out): where other objects tie with it at 0
    (duplicates, or a catalogue's dense embeddings) the index may rank them first or, with
    more than k of them, leave it out."""
    mine = table["object_id"] == object_id
    row = table[mine].head(1) if mine.any() else own()
    out = pd.concat([row.assign(distance=0.0), table[~mine]], ignore_index=True).head(len(table))
    out["rank"] = np.arange(1, len(out) + 1)
    return out


def _signature(index_run, cache: ArtifactCache):
    """(Signature, embedding dimension) of an index run whose vectors are joined with the
    anomaly signature; (None, None) for one that holds the embeddings alone."""
    from hyrax_mlops.analysis.signature import Signature
    from hyrax_mlops.stages.index import INDEX_JSON, TAG_VECTORS

    if index_run.data.tags.get(TAG_VECTORS) != "joined":
        return None, None
    with open(cache.fetch(index_run.info.run_id, INDEX_JSON)) as f:
        recipe = json.load(f)["signature"]
    return Signature.from_dict(recipe), int(recipe["embedding_dim"])


def cutout_statistics(loaded, cube: np.ndarray) -> dict[str, np.ndarray]:
    """The stamp statistics of one raw (bands, h, w) cutout, normalised with the model's own
    transform, and of its residual when the model reconstructs its input: what analyse
    measures for every object of a dataset."""
    import torch

    from hyrax_mlops.analysis.stamp_statistics import stamp_statistics
    from hyrax_mlops.engine.inference import can_reconstruct

    x = torch.from_numpy(loaded.normalizer.apply(np.array(cube[None], dtype=np.float32)))
    residual = None
    if can_reconstruct(loaded.model):
        with torch.no_grad():
            residual = loaded.model.eval().reconstruct({"image": x}) - x
    return stamp_statistics(x, residual, stretch=loaded.normalizer.method)


def search_by_id(run_id: str, object_id: str, k: int = 10, cfg: Config | None = None):
    """The k nearest neighbours of `object_id` (itself first), with distances and catalog rows."""
    return Searcher(run_id, cfg).by_id([object_id], k)[0]


def search_by_vector(run_id: str, vector, k: int = 10, cfg: Config | None = None):
    """The k nearest neighbours of an embedding vector, with distances and catalog rows."""
    return Searcher(run_id, cfg).by_vector(np.asarray(vector), k)[0]


def search_by_examples(run_id: str, object_ids: Sequence[str], k: int = 10,
                       cfg: Config | None = None, *, each: bool = False) -> list[pd.DataFrame]:
    """Objects most like a set of examples (their centroid), or like each of them."""
    return Searcher(run_id, cfg).by_examples(object_ids, k, each=each)


def search_by_cutout(run_id: str, path: str, k: int = 10, cfg: Config | None = None):
    """Objects most like an external FITS cutout, embedded with the run's model."""
    return Searcher(run_id, cfg).by_cutout(path, k)


def search_by_spectrum(run_id: str, path: str, k: int = 10, cfg: Config | None = None):
    """Objects most like a spectrum file, embedded with the run's model."""
    return Searcher(run_id, cfg).by_spectrum(path, k)


def search_by_lightcurve(run_id: str, path: str, k: int = 10, cfg: Config | None = None):
    """Objects most like a light-curve file, embedded with the run's model."""
    return Searcher(run_id, cfg).by_lightcurve(path, k)
