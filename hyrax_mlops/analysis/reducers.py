"""Dimensionality reducers, looked up by name: `reduce(X, dims, cfg) -> (n, dims)` float32."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hyrax_mlops.config import ReduceConfig
from hyrax_mlops.registry import Registry

Reducer = Callable[[np.ndarray, int, ReduceConfig], np.ndarray]
REDUCERS: Registry[Reducer] = Registry("reducer")


@REDUCERS.register("pca")
def pca(x: np.ndarray, dims: int, cfg: ReduceConfig) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=dims, random_state=cfg.seed).fit_transform(x).astype(np.float32)


@REDUCERS.register("umap")
def umap(x: np.ndarray, dims: int, cfg: ReduceConfig) -> np.ndarray:
    import umap as umap_learn

    model = umap_learn.UMAP(
        n_components=dims, n_neighbors=min(cfg.umap_n_neighbors, len(x) - 1),
        min_dist=cfg.umap_min_dist, metric=cfg.umap_metric, random_state=cfg.seed, n_jobs=1,
    )
    return model.fit_transform(x).astype(np.float32)
