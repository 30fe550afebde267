"""What the app reads, read once per run id and kept in memory (never per callback).

A `Reduction` is one reduce run: its maps (x, y[, z] per object), the catalog of the dataset
behind it, pixels for thumbnails, and the vector index of its embeddings for neighbours.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hyrax_mlops.analysis.outliers import RESIDUAL_MAP
from hyrax_mlops.config import Config
from hyrax_mlops.tracking import TAG_INPUT, TAG_STAGE, ArtifactCache, get_run, use_store

log = logging.getLogger(__name__)

MAX_CACHED_RUNS = 6
ANALYSES_RECHECK_S = 5.0


@dataclass
class Reduction:
    """Maps, catalog and pixels of one reduce run, aligned by catalog row."""

    run_id: str
    maps: dict[str, pd.DataFrame]  # key -> columns x, y[, z], row (into catalog)
    catalog: pd.DataFrame  # object_id first
    images: Callable[[np.ndarray], np.ndarray] | None = None  # rows -> (n, bands, h, w)
    infer_run_id: str | None = None
    _row_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ids = self.catalog["object_id"].astype(str).to_numpy()

    def rows_of(self, ids) -> np.ndarray:
        """Catalog rows of object ids (unknown ids are dropped)."""
        if not self._row_of:
            self._row_of = {oid: i for i, oid in enumerate(self.ids)}
        return np.array([self._row_of[i] for i in ids if i in self._row_of], dtype=np.int64)

    @property
    def keys(self) -> list[str]:
        return sorted(self.maps)

    def columns(self) -> list[str]:
        """Columns to colour by and list: not the ids, nor images (residual maps)."""
        return [c for c in self.catalog.columns if c not in ("object_id", RESIDUAL_MAP)]


class AppData:
    """The app's window on the tracking store; heavy reads are cached by run id."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        self._lock = threading.Lock()
        self._extra: dict[str, Reduction] = {}
        self.reduce_inputs: dict[str, str | None] = {}  # reduce run -> its embeddings run
        self._analyses: dict[str, tuple[float, tuple[str, ...]]] = {}  # run -> (when, runs)
        self.preferred: str | None = None  # the reduce run the explorer opens on
        use_store()

    # -- runs -----------------------------------------------------------------------------
    def experiments(self) -> list[tuple[str, str]]:
        import mlflow

        return [(e.experiment_id, e.name) for e in mlflow.search_experiments()]

    def runs(self, experiment_ids: list[str], filter_string: str = "") -> pd.DataFrame:
        import mlflow

        if not experiment_ids:
            return pd.DataFrame()
        return mlflow.search_runs(experiment_ids=experiment_ids, filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=2000)

    def reduce_runs(self) -> list[dict]:
        """FINISHED reduce runs, newest first, as dropdown options."""
        import mlflow

        df = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`{TAG_STAGE}` = 'reduce' AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=200)
        col = f"tags.{TAG_INPUT}embeddings"
        self.reduce_inputs.update(zip(df.get("run_id", []), df.get(col, [None] * len(df)),
                                      strict=True))
        opts = [{"label": f"{r['tags.mlflow.runName']}  {r['run_id'][:8]}  "
                          f"{r['start_time']:%Y-%m-%d %H:%M}", "value": r["run_id"]}
                for _, r in df.iterrows()]
        opts += [{"label": f"{rid} (in memory)", "value": rid} for rid in self._extra]
        return opts

    def distinct_reductions(self, options: list[dict], n: int = 2) -> list[str]:
        """Up to `n` reduce runs (dropdown options) to compare: see `distinct_runs`."""
        return distinct_runs([o["value"] for o in options], self.reduce_inputs, n)

    # -- reductions -------------------------------------------------------------------------
    def add(self, reduction: Reduction) -> None:
        """Serve a reduction that is not in MLflow (benchmarks, notebooks)."""
        self._extra[reduction.run_id] = reduction

    def reduction(self, run_id: str) -> Reduction:
        """A reduce run's maps, catalog and pixels, with the columns of the analyse runs of
        its embeddings, re-merged when an analyse run has finished since (looked up at most
        every ANALYSES_RECHECK_S seconds per run): no app restart to see new scores."""
        if run_id in self._extra:
            return self._extra[run_id]
        from hyrax_mlops.search import analyse_run_ids

        with self._lock:
            base = _load_reduction(run_id, self.cfg.tracking.cache_dir)
            checked, analyses = self._analyses.get(run_id, (-np.inf, ()))
            if time.monotonic() - checked > ANALYSES_RECHECK_S:
                analyses = analyse_run_ids(base.infer_run_id)
                self._analyses[run_id] = (time.monotonic(), analyses)
            return _with_analyses(run_id, analyses, self.cfg.tracking.cache_dir)

    def searcher(self, reduction: Reduction):
        """The vector index behind a reduction (newest index run of its embeddings), or None
        when there is none. An index that exists but cannot be reached raises
        IndexUnreachable: the user must fix the store, not re-index."""
        if not reduction.infer_run_id:
            return None
        from hyrax_mlops.errors import HyraxError
        from hyrax_mlops.vectors import IndexUnreachable

        try:  # not cached when it fails: an index made later is found on the next click
            return _searcher(reduction.infer_run_id, self.cfg.tracking.cache_dir)
        except IndexUnreachable:
            raise
        except HyraxError:
            return None


def distinct_runs(runs: list[str], inputs: dict[str, str | None], n: int = 2) -> list[str]:
    """Up to `n` of `runs` (newest first), preferring runs of different embeddings
    (`inputs`: run -> embeddings run; two reductions of one embeddings look alike), never
    one run twice."""
    runs = list(dict.fromkeys(runs))
    picked, seen = [], set()
    for rid in runs:  # first one run per embeddings, then the rest
        emb = inputs.get(rid) or rid
        if emb not in seen:
            picked.append(rid)
            seen.add(emb)
    return (picked + [rid for rid in runs if rid not in picked])[:n]


@functools.lru_cache(maxsize=MAX_CACHED_RUNS)
def _load_reduction(run_id: str, cache_dir: str) -> Reduction:
    from pathlib import Path

    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset

    cache = ArtifactCache.at(cache_dir)
    run = get_run(run_id, "reduce")
    dataset = Dataset(cache.fetch(run.data.tags[TAG_INPUT + "dataset"], ARTIFACT_DIR))
    folder = Path(cache.fetch(run_id, "reductions"))
    row_of = pd.Series(np.arange(len(dataset)), index=dataset.ids)
    maps = {}
    for path in sorted(folder.glob("*.parquet")):
        table = pd.read_parquet(path)
        table["row"] = row_of.loc[table["object_id"].astype(str)].to_numpy()
        maps[path.stem] = table.drop(columns="object_id")
    infer_run_id = run.data.tags.get(TAG_INPUT + "embeddings")
    return Reduction(run_id, maps, dataset.catalog, dataset.images, infer_run_id=infer_run_id)


@functools.lru_cache(maxsize=MAX_CACHED_RUNS)
def _with_analyses(run_id: str, analyses: tuple[str, ...], cache_dir: str) -> Reduction:
    """The reduction with the outlier scores, clusters and matched labels of these analyse
    runs as catalog columns (to colour by them)."""
    from hyrax_mlops.search import with_analysis_columns

    base = _load_reduction(run_id, cache_dir)
    if not analyses:
        return base
    catalog = with_analysis_columns(base.catalog, base.infer_run_id,
                                    ArtifactCache.at(cache_dir), analyses)
    return Reduction(run_id, base.maps, catalog, base.images, infer_run_id=base.infer_run_id)


@functools.lru_cache(maxsize=MAX_CACHED_RUNS)
def _searcher(infer_run_id: str, cache_dir: str):
    """An index opened once per embeddings run, its partitions read into memory in the
    background (the next clicks' neighbours come from memory, not from disk)."""
    from hyrax_mlops.search import Searcher

    searcher = Searcher(infer_run_id, _cache_config(cache_dir))
    threading.Thread(target=_prewarm, args=(searcher,), name="hyrax-prewarm",
                     daemon=True).start()
    return searcher


def _prewarm(searcher) -> None:
    try:
        searcher.prewarm()
    except Exception as exc:  # queries still work, reading partitions as they go
        log.warning("could not read the index into memory ahead of queries: %s", exc)


def _cache_config(cache_dir: str) -> Config:
    return Config.model_validate({"tracking": {"cache_dir": cache_dir}})
