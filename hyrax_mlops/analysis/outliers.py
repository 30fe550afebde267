"""Outlier scores of the latent space: kNN distance, local outlier factor, isolation forest;
for models that reconstruct their input, the reconstruction error ("recon") and the most
significant of the stamp statistics of the pixels and the residual ("residual", see
`stamp_statistics`); without a model, those of the pixels alone ("pixels"). The `analyse`
stage measures the statistics in one pass over the pixels and hands them over.

Every object's `explained_by` names the method that ranked it highest and, for "residual"
and "pixels", the statistic: "residual: sharp_pixel_one_band" (a sharp pixel in one band).

Each score is turned into its rank, normalised to [0, 1] (1 = the most outlying object), so
scores on different scales can be averaged: `outlier_score` is the mean of the methods'
ranks, and `rank` orders objects by it (1 = the strongest outlier).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from hyrax_mlops.analysis.analyses import ANALYSES, AnalysisContext, AnalysisResult
from hyrax_mlops.config import ComponentConfig, unique_names
from hyrax_mlops.errors import ConfigError

OUTLIERS_TABLE = "analysis/outliers.parquet"
GALLERY = "plots/outlier_gallery.png"
RESIDUAL_MAP = "residual_map"  # per-object column: a flagged outlier's residual, as a PNG
RESIDUAL_MAPS = 1000  # the most flagged outliers given one (a few kB each)


def knn_distance(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Mean Euclidean distance of each point to its k nearest other points."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=min(k, len(x) - 1)).fit(x).kneighbors()
    return dist.mean(axis=1)  # kneighbors() without X leaves each point out of its own list


def lof(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Local outlier factor (Breunig et al. 2000): density of a point against its neighbours'."""
    from sklearn.neighbors import LocalOutlierFactor

    model = LocalOutlierFactor(n_neighbors=min(k, len(x) - 1)).fit(x)
    return -model.negative_outlier_factor_


def iforest(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Isolation forest (Liu et al. 2008): points isolated by few random splits score high."""
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=200, random_state=seed).fit(x)
    return -model.score_samples(x)


METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "knn": knn_distance, "lof": lof, "iforest": iforest,
}
PRECOMPUTED = {"recon": "reconstruction_error"}  # method -> the per-object column it reads
STATISTIC_METHODS = ("residual", "pixels")  # scored from the stamp statistics


def rank_normalise(score: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1]: 0 for the lowest score, 1 for the highest (ties share a rank;
    a missing score ranks lowest)."""
    from scipy.stats import rankdata

    if len(score) < 2:
        return np.zeros(len(score))
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)
    return (rankdata(score, method="average") - 1) / (len(score) - 1)


def outlier_table(ids: np.ndarray, x: np.ndarray, methods: list[str], k: int, seed: int,
                  top_fraction: float, given: dict[str, np.ndarray] | None = None,
                  statistic: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """object_id, <method>_score and <method>_rank per method, outlier_score, rank, is_outlier,
    explained_by; sorted by rank. `given` holds scores computed elsewhere, by method name;
    `statistic`, for those methods, the statistic behind each object's score."""
    table = pd.DataFrame({"object_id": ids})
    for name in methods:
        score = given[name] if given and name in given else METHODS[name](x, k, seed)
        table[f"{name}_score"] = score
        table[f"{name}_rank"] = rank_normalise(score)
        if statistic and name in statistic:
            table[f"{name}_statistic"] = statistic[name]
    ranks = table[[f"{m}_rank" for m in methods]]
    table["outlier_score"] = ranks.mean(axis=1)
    best = np.asarray(methods, dtype=object)[ranks.to_numpy().argmax(axis=1)]
    table["explained_by"] = [f"{m}: {table.at[i, f'{m}_statistic']}"
                             if f"{m}_statistic" in table else m for i, m in enumerate(best)]
    order = np.argsort(-table["outlier_score"].to_numpy(), kind="stable")
    rank = np.empty(len(table), dtype=np.int64)
    rank[order] = np.arange(1, len(table) + 1)
    table["rank"] = rank
    table["is_outlier"] = rank <= math.ceil(top_fraction * len(table))
    return table.sort_values("rank").reset_index(drop=True)


def residual_map_column(ctx: AnalysisContext, table: pd.DataFrame) -> np.ndarray:
    """Per object (in `ctx.ids` order): its residual map as a PNG data URI when it is among
    the flagged outliers (the first RESIDUAL_MAPS of them), else None; the app's hover card
    and search results show it beside the cutout."""
    from hyrax_mlops.analysis.gallery import residual_png_uri

    flagged = table.loc[table["is_outlier"], "object_id"].head(RESIDUAL_MAPS).astype(str)
    position = pd.Series(np.arange(len(ctx.ids)), index=np.asarray(ctx.ids, dtype=str))
    rows = position.loc[flagged].to_numpy()
    out = np.full(len(ctx.ids), None, dtype=object)
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        for row, residual in zip(chunk, ctx.residuals(chunk), strict=True):
            out[row] = residual_png_uri(residual)
    return out


def statistics_score(ctx: AnalysisContext, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(score, statistic) of "residual" (every stamp statistic) or "pixels" (those of the
    pixels alone): the most significant statistic of each object (`significance`)."""
    from hyrax_mlops.analysis.stamp_statistics import NAMES_RESIDUAL, significance

    stats = ctx.statistics
    if stats is None or (method == "residual" and not any(
            c.startswith(NAMES_RESIDUAL) for c in stats.columns)):
        need = ("a model with a reconstruct() method" if method == "residual"
                else "the dataset's pixels")
        raise ConfigError(f"config key 'analyse.outlier_methods': \"{method}\" needs {need}. "
                          f"Fix: drop \"{method}\" from analyse.outlier_methods")
    keep = [c for c in stats.columns if c != "reconstruction_error"
            and (method == "residual" or not c.startswith(NAMES_RESIDUAL))]
    return significance({c: stats[c].to_numpy(dtype=float) for c in keep})


class OutliersConfig(ComponentConfig):
    """`[analyse]` keys of "outliers" (see defaults.toml for what each method measures)."""

    outlier_methods: list[Literal["auto", "knn", "lof", "iforest", "recon", "residual",
                                  "pixels"]] = ["auto"]
    outlier_k: int = Field(10, ge=1)
    top_fraction: float = Field(0.05, gt=0, le=1)
    gallery: int = Field(25, ge=0)

    @field_validator("outlier_methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unique_names(v, "outlier_methods")
        if "auto" in v and len(v) > 1:
            raise ValueError('"auto" chooses the methods itself: use it alone, or list methods')
        return v


@ANALYSES.register("outliers")
def outliers(ctx: AnalysisContext) -> AnalysisResult:
    cfg = ctx.cfg
    if len(ctx.ids) < 3:
        return AnalysisResult(notes=[f"outliers: {len(ctx.ids)} objects are too few to score"])
    given = {}
    for method, column in PRECOMPUTED.items():
        if method in cfg.outlier_methods:
            values = ctx.column(column)
            if values is None:
                raise ConfigError(f"config key 'analyse.outlier_methods': \"{method}\" needs "
                                  f"the per-object column '{column}', which nothing made")
            given[method] = values.to_numpy(dtype=float)
    statistic = {}
    for method in STATISTIC_METHODS:
        if method in cfg.outlier_methods:
            given[method], statistic[method] = statistics_score(ctx, method)
    table = outlier_table(ctx.ids, ctx.vectors, cfg.outlier_methods, cfg.outlier_k, cfg.seed,
                          cfg.top_fraction, given, statistic)
    by_id = table.set_index("object_id").loc[ctx.ids]
    result = AnalysisResult(
        tables={OUTLIERS_TABLE: table},
        metrics={"outliers.n_flagged": int(table["is_outlier"].sum())},
        columns={"outlier_score": by_id["outlier_score"].to_numpy(),
                 "outlier_rank": by_id["rank"].to_numpy(),
                 "is_outlier": by_id["is_outlier"].to_numpy(),
                 "outlier_why": by_id["explained_by"].to_numpy()},
    )
    if ctx.residuals is not None:
        result.columns[RESIDUAL_MAP] = residual_map_column(ctx, table)
    if cfg.gallery and ctx.images is not None:
        from hyrax_mlops.analysis.gallery import cutout_grid

        top = table.head(cfg.gallery)
        rows = pd.Series(np.arange(len(ctx.ids)), index=ctx.ids).loc[top["object_id"]].to_numpy()
        cubes = ctx.images(rows)
        titles = [f"#{r} {oid} {s:.3f}\n{why.split(': ')[-1]}" for r, oid, s, why in
                  zip(top["rank"], top["object_id"], top["outlier_score"], top["explained_by"],
                      strict=True)]
        below = ctx.residuals(rows) if ctx.residuals is not None else None
        result.figures[GALLERY] = cutout_grid(
            cubes, titles, f"Top {len(top)} outliers (outlier_score)"
            + (": each cutout, then where its residual is (|reconstruction - input|)"
               if below is not None else ""), residuals=below)
    elif cfg.gallery:
        result.notes.append("outliers: no gallery, the dataset's pixels are not stored")
    return result


outliers.config_class = OutliersConfig
