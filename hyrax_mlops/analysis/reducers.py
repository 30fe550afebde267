"""Dimensionality reducers, looked up by name: `reduce(X, dims, cfg) -> (n, dims)` float32."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from hyrax_mlops.config import ComponentConfig, ReduceConfig
from hyrax_mlops.registry import Registry

Reducer = Callable[[np.ndarray, int, ReduceConfig], np.ndarray]
REDUCERS: Registry[Reducer] = Registry("reducer")


@REDUCERS.register("pca")
def pca(x: np.ndarray, dims: int, cfg: ReduceConfig) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=dims, random_state=cfg.seed).fit_transform(x).astype(np.float32)


class UmapConfig(ComponentConfig):
    """UMAP's keys, in `[reduce]`."""

    umap_n_neighbors: int = Field(15, ge=2)
    umap_min_dist: float = Field(0.1, ge=0)
    umap_metric: str = "cosine"
    umap_fit_sample: int = Field(100_000, ge=100)  # fitted on at most this many objects
    umap_batch: int = Field(100_000, ge=1)  # the rest placed by transform(), this many a time


def umap_fit_size(n: int, cfg: ReduceConfig) -> int:
    """How many objects UMAP is fitted on (the rest are placed by `transform`)."""
    return min(n, cfg.umap_fit_sample)


@REDUCERS.register("umap")
def umap(x: np.ndarray, dims: int, cfg: ReduceConfig) -> np.ndarray:
    """UMAP fitted on a seeded sample of at most `umap_fit_sample` objects; the others are
    embedded with `transform` in batches, so a million points fit in time and memory."""
    from tqdm.auto import tqdm

    from hyrax_mlops.analysis.numba_cache import enable_persistent_cache

    enable_persistent_cache()
    import umap as umap_learn

    n_fit = umap_fit_size(len(x), cfg)
    model = umap_learn.UMAP(
        n_components=dims, n_neighbors=min(cfg.umap_n_neighbors, n_fit - 1),
        min_dist=cfg.umap_min_dist, metric=cfg.umap_metric, random_state=cfg.seed, n_jobs=1,
    )
    if n_fit == len(x):
        return model.fit_transform(x).astype(np.float32)
    rng = np.random.default_rng(cfg.seed)
    fit_rows = np.sort(rng.choice(len(x), n_fit, replace=False))
    out = np.empty((len(x), dims), np.float32)
    out[fit_rows] = model.fit_transform(x[fit_rows])
    rest = np.setdiff1d(np.arange(len(x)), fit_rows)
    for s in tqdm(range(0, len(rest), cfg.umap_batch), desc=f"umap transform {dims}d",
                  unit="batch"):
        rows = rest[s:s + cfg.umap_batch]
        out[rows] = model.transform(x[rows])
    return out


umap.config_class = UmapConfig
