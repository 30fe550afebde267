"""Clusters with HDBSCAN or DBSCAN, in the latent space, on a 2D map, or in catalog columns.

`cluster_on = "auto"` (the default) clusters the reduce run's 2D map when the analysis has
one, else a UMAP 2D map of the latent space made on the spot.

`cluster_on = "catalog"` clusters the z-scored `cluster_columns`; with `cluster_umap_first`
those are first mapped to 2D with UMAP and then clustered (the recipe used to find lens
fields: UMAP of the catalog, then DBSCAN). Label -1 is noise (and objects with a missing
catalog value, which are not clustered).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from hyrax_mlops.analysis.analyses import ANALYSES, AnalysisContext, AnalysisResult
from hyrax_mlops.config import AnalyseConfig, ComponentConfig
from hyrax_mlops.errors import ConfigError

CLUSTERS_TABLE = "analysis/clusters.parquet"
SUMMARY = "analysis/cluster_summary.csv"
PLOT = "plots/clusters.png"
SPACE_TAG = "hyrax.analyse.cluster_space"  # on the analyse run: what was clustered
_SILHOUETTE_SAMPLE = 5000


def fit_labels(x: np.ndarray, cfg: AnalyseConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Cluster labels (-1 = noise) and, for HDBSCAN, each point's membership strength."""
    from sklearn.cluster import DBSCAN, HDBSCAN

    if cfg.cluster_method == "dbscan":
        return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples).fit_predict(x), None
    model = HDBSCAN(min_cluster_size=cfg.min_cluster_size,
                    min_samples=min(cfg.min_samples, len(x) - 1), copy=True).fit(x)
    return model.labels_, model.probabilities_


def catalog_space(catalog: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Z-scored numeric columns, and which rows have every value (the others are left out)."""
    missing = [c for c in columns if c not in catalog]
    if missing:
        raise ConfigError(f"config key 'analyse.cluster_columns' names columns not in the "
                          f"catalog: {', '.join(missing)} (catalog has: "
                          f"{', '.join(map(str, catalog.columns))})")
    try:
        values = catalog[columns].astype(float).to_numpy()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'analyse.cluster_columns': every column must be "
                          f"numeric ({exc})") from None
    ok = np.isfinite(values).all(axis=1)
    std = values[ok].std(axis=0)
    values = (values - values[ok].mean(axis=0)) / np.where(std > 0, std, 1.0)
    return values, ok


def latent_map(ctx: AnalysisContext) -> tuple[np.ndarray, str]:
    """A UMAP 2D map of the latent space, made as `reduce` makes its own (its default
    settings, `analyse.seed`): density clustering finds nothing in the raw latent space
    (on the demo, HDBSCAN calls every object noise) and clusters well on such a map."""
    from hyrax_mlops.analysis.reducers import REDUCERS
    from hyrax_mlops.config import ReduceConfig

    n, width = ctx.vectors.shape
    if n < 4:
        return ctx.vectors, f"latent ({width}D)"
    xy = REDUCERS.get("umap")(ctx.vectors, 2, ReduceConfig(seed=ctx.cfg.seed))
    return np.asarray(xy, dtype=float), f"UMAP 2D of latent ({width}D)"


def cluster_space(ctx: AnalysisContext) -> tuple[np.ndarray, np.ndarray, str]:
    """The points to cluster, which objects take part, and a name for the space."""
    cfg = ctx.cfg
    every = np.ones(len(ctx.ids), dtype=bool)
    if cfg.cluster_on == "auto" and ctx.map is None:
        space, name = latent_map(ctx)
        return space, every, name
    if cfg.cluster_on == "latent":
        return ctx.vectors, every, f"latent ({ctx.vectors.shape[1]}D)"
    if cfg.cluster_on in ("map", "auto"):
        if ctx.map is None:
            raise ConfigError('config key \'analyse.cluster_on\' = "map" needs a reduce run\'s '
                              "2D map: pass --map RUN (map= in Python)")
        return ctx.map, every, ctx.map_name or "map"
    values, ok = catalog_space(ctx.catalog, cfg.cluster_columns)
    name = ", ".join(cfg.cluster_columns)
    if not cfg.cluster_umap_first:
        return values, ok, f"catalog ({name})"
    from hyrax_mlops.analysis.reducers import REDUCERS
    from hyrax_mlops.config import ReduceConfig

    umap_cfg = ReduceConfig(seed=cfg.seed, umap_metric="euclidean")
    out = np.full((len(values), 2), np.nan, dtype=np.float32)
    out[ok] = REDUCERS.get("umap")(values[ok], 2, umap_cfg)
    return out, ok, f"UMAP of catalog ({name})"


def summary(labels: np.ndarray, catalog: pd.DataFrame, columns: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster (noise as -1): size, share, and medians of the numeric columns."""
    numeric = pd.concat([catalog.reset_index(drop=True),
                         columns.drop(columns="object_id").reset_index(drop=True)], axis=1)
    numeric = numeric.loc[:, ~numeric.columns.duplicated()]
    numeric = numeric.select_dtypes("number").dropna(axis=1, how="all")
    numeric = numeric.drop(columns=[c for c in numeric if c.startswith("cluster")])
    grouped = numeric.assign(cluster=labels).groupby("cluster")
    table = grouped.median().add_prefix("median_")
    table.insert(0, "n_objects", grouped.size())
    table.insert(1, "fraction", table["n_objects"] / len(labels))
    return table.reset_index()


def plot(xy: np.ndarray, labels: np.ndarray, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    noise = labels < 0
    ax.scatter(xy[noise, 0], xy[noise, 1], s=5, c="lightgrey", linewidths=0, label="noise")
    found = sorted(set(labels[~noise].tolist()))
    cmap = plt.get_cmap("tab20")
    for i, lab in enumerate(found):
        pts = labels == lab
        ax.scatter(xy[pts, 0], xy[pts, 1], s=7, color=cmap(i % 20), linewidths=0,
                   label=f"{lab} ({pts.sum()})")
    if len(found) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _display_xy(ctx: AnalysisContext, space: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, str]:
    """2D positions to draw: the clustered space if 2D, else the map, else PCA of the space."""
    if space.shape[1] == 2:
        return space, ""
    if ctx.map is not None:
        return ctx.map, f", shown on {ctx.map_name or 'the map'}"
    xy = np.zeros((len(space), 2))
    if space.shape[1] == 1:
        xy[:, 0] = space[:, 0]
        return xy, ""
    from sklearn.decomposition import PCA

    xy[ok] = PCA(n_components=2, random_state=ctx.cfg.seed).fit_transform(space[ok])
    return xy, ", shown by PCA"


class ClustersConfig(ComponentConfig):
    """`[analyse]` keys of "clusters"."""

    cluster_method: Literal["hdbscan", "dbscan"] = "hdbscan"
    cluster_on: Literal["auto", "latent", "map", "catalog"] = "auto"
    cluster_columns: list[str] = []
    cluster_umap_first: bool = False
    min_cluster_size: int = Field(10, ge=2)
    eps: float = Field(0.5, gt=0)
    min_samples: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ClustersConfig:
        if len(set(self.cluster_columns)) != len(self.cluster_columns):
            raise ValueError(f"cluster_columns repeats a name: {self.cluster_columns}")
        if self.cluster_on == "catalog" and not self.cluster_columns:
            raise ValueError('cluster_on = "catalog" needs analyse.cluster_columns, the catalog '
                             'columns to cluster on, e.g. ["ra", "dec", "redshift"]')
        if self.cluster_umap_first and self.cluster_on != "catalog":
            raise ValueError('analyse.cluster_umap_first applies to cluster_on = "catalog" '
                             "only (a map is already 2D; cluster_on = \"auto\" clusters a UMAP "
                             "map of the latent space)")
        return self


@ANALYSES.register("clusters")
def clusters(ctx: AnalysisContext) -> AnalysisResult:
    cfg = ctx.cfg
    space, ok, where = cluster_space(ctx)
    labels = np.full(len(ctx.ids), -1, dtype=np.int64)
    strength = np.full(len(ctx.ids), np.nan)
    if ok.sum() > cfg.min_samples:
        fitted, prob = fit_labels(space[ok], cfg)
        labels[ok] = fitted
        if prob is not None:
            strength[ok] = prob
    table = pd.DataFrame({"object_id": ctx.ids, "cluster": labels})
    if cfg.cluster_method == "hdbscan":
        table["cluster_probability"] = strength
    found = labels[labels >= 0]
    metrics = {"clusters.n_clusters": len(np.unique(found)),
               "clusters.noise_fraction": float(np.mean(labels < 0))}
    members = labels >= 0
    if len(np.unique(found)) >= 2:
        from sklearn.metrics import silhouette_score

        metrics["clusters.silhouette"] = float(silhouette_score(
            space[members], labels[members],
            sample_size=min(_SILHOUETTE_SAMPLE, int(members.sum())), random_state=cfg.seed))
    xy, shown = _display_xy(ctx, space, ok)
    title = (f"{cfg.cluster_method.upper()} on {where}{shown}: "
             f"{metrics['clusters.n_clusters']} clusters, "
             f"{metrics['clusters.noise_fraction']:.0%} noise")
    return AnalysisResult(
        tables={CLUSTERS_TABLE: table, SUMMARY: summary(labels, ctx.catalog, ctx.columns)},
        figures={PLOT: plot(xy, labels, title)},
        metrics=metrics,
        columns={"cluster": labels},
        tags={SPACE_TAG: where},
    )


clusters.config_class = ClustersConfig
