"""Dimensionality reducers, looked up by name: `reduce(X, dims, cfg) -> (n, dims)` float32.

A reducer that is fitted on a sample (UMAP, t-SNE) says how many objects with `fit_size(n,
cfg)`, which `reduce` logs as `<method>_<dims>d_fit_sample`."""

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


def fit_then_place(x: np.ndarray, dims: int, n_fit: int, seed: int, batch: int, desc: str,
                   fit: Callable[[np.ndarray], tuple[np.ndarray, object]],
                   place: Callable[[object, np.ndarray], np.ndarray]) -> np.ndarray:
    """(n, dims) float32: `fit(sample) -> (its coordinates, the fitted model)` on a seeded
    sample of `n_fit` rows (all of them when n_fit covers x), then the other rows placed
    into that map by `place(fitted, rows)`, `batch` rows at a time."""
    from hyrax_mlops.progress import tqdm

    if n_fit >= len(x):
        return np.asarray(fit(x)[0], dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(len(x), n_fit, replace=False))
    out = np.empty((len(x), dims), np.float32)
    out[fit_rows], fitted = fit(x[fit_rows])
    rest = np.setdiff1d(np.arange(len(x)), fit_rows)
    for start in tqdm(range(0, len(rest), batch), desc=desc, unit="batch"):
        rows = rest[start:start + batch]
        out[rows] = place(fitted, x[rows])
    return out


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

    from hyrax_mlops.analysis.numba_cache import enable_persistent_cache

    enable_persistent_cache()
    import umap as umap_learn

    n_fit = umap_fit_size(len(x), cfg)
    model = umap_learn.UMAP(
        n_components=dims, n_neighbors=min(cfg.umap_n_neighbors, n_fit - 1),
        min_dist=cfg.umap_min_dist, metric=cfg.umap_metric, random_state=cfg.seed, n_jobs=1,
    )
    return fit_then_place(x, dims, n_fit, cfg.seed, cfg.umap_batch, f"umap transform {dims}d",
                          lambda sample: (model.fit_transform(sample), model),
                          lambda fitted, rows: fitted.transform(rows))


umap.config_class = UmapConfig
umap.fit_size = umap_fit_size


class TsneConfig(ComponentConfig):
    """t-SNE's keys, in `[reduce]`."""

    tsne_perplexity: float = Field(30.0, gt=1)
    tsne_metric: str = "cosine"
    tsne_fit_sample: int = Field(20_000, ge=100)  # fitted on at most this many objects
    tsne_batch: int = Field(50_000, ge=1)  # the rest placed by transform(), this many a time


def tsne_fit_size(n: int, cfg: ReduceConfig) -> int:
    """How many objects t-SNE is fitted on (the rest are placed by `transform`)."""
    return min(n, cfg.tsne_fit_sample)


@REDUCERS.register("tsne")
def tsne(x: np.ndarray, dims: int, cfg: ReduceConfig) -> np.ndarray:
    """openTSNE fitted on a seeded sample of at most `tsne_fit_sample` objects (t-SNE's cost
    grows faster than UMAP's); the others are placed into that map by `transform`, which
    optimises each new point against the fitted ones, in batches. 2D uses the FFT-accelerated
    gradient, 3D Barnes-Hut (FFT interpolation is for one or two dimensions)."""
    from openTSNE import TSNE

    n_fit = tsne_fit_size(len(x), cfg)
    perplexity = min(cfg.tsne_perplexity, (n_fit - 1) / 3)  # openTSNE needs 3 * p < n
    model = TSNE(n_components=dims, perplexity=perplexity, metric=cfg.tsne_metric,
                 random_state=cfg.seed, n_jobs=1, verbose=False,
                 negative_gradient_method="fft" if dims <= 2 else "bh")

    def fit(sample: np.ndarray):
        embedding = model.fit(sample)  # a TSNEEmbedding: its coordinates, and transform()
        return np.asarray(embedding), embedding

    return fit_then_place(x, dims, n_fit, cfg.seed, cfg.tsne_batch,
                          f"t-sne transform {dims}d", fit,
                          lambda fitted, rows: np.asarray(fitted.transform(rows)))


tsne.config_class = TsneConfig
tsne.fit_size = tsne_fit_size
