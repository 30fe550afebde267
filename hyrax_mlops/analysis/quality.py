"""How well a latent space (and its 2D map) keeps known classes together.

- kNN purity: for each labelled object, the fraction of its k nearest labelled neighbours
  that share its label, averaged. `knn_purity_chance` is what random neighbours would give,
  sum_c n_c (n_c - 1) / (n (n - 1)), the bar a useful latent space clears.
- silhouette: of the labels as clusters (-1..1; sklearn, Euclidean, on a sample of 5000).
- neighbourhood recall (with a map): the fraction of each object's k nearest neighbours in
  the latent space that are also among its k nearest on the map: how faithful the map is.

The `map_` metrics are the same measures on a reduce run's 2D map.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field

from hyrax_mlops.analysis.analyses import ANALYSES, AnalysisContext, AnalysisResult
from hyrax_mlops.config import ComponentConfig
from hyrax_mlops.errors import ConfigError

PREFIX = "quality."
BY_CLASS = "analysis/quality_by_class.csv"
_SAMPLE = 5000


def neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each point's k nearest other points (Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)


def purity_per_object(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Fraction of each point's k nearest neighbours that share its label."""
    nn = neighbours(x, min(k, len(x) - 1))
    return (labels[nn] == labels[:, None]).mean(axis=1)


def chance_purity(labels: np.ndarray) -> float:
    """Expected kNN purity if neighbours were drawn at random from the other objects."""
    _, counts = np.unique(labels, return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    from sklearn.metrics import silhouette_score

    if not 2 <= len(np.unique(labels)) <= len(x) - 1:
        return None
    return float(silhouette_score(x, labels, sample_size=min(_SAMPLE, len(x)),
                                  random_state=seed))


def neighbourhood_recall(latent: np.ndarray, mapped: np.ndarray, k: int, seed: int) -> float:
    """Mean share of latent k-neighbours kept among the map's k-neighbours (on a sample)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(latent) - 1)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(latent), size=min(_SAMPLE, len(latent)), replace=False)
    found = []
    for space in (latent, mapped):
        nn = NearestNeighbors(n_neighbors=k + 1).fit(space).kneighbors(space[rows],
                                                                       return_distance=False)
        found.append([{j for j in r if j != i} if i in r else set(r[:k])
                      for r, i in zip(nn, rows, strict=True)])
    return float(np.mean([len(a & b) / k for a, b in zip(*found, strict=True)]))


def labels_of(ctx: AnalysisContext) -> tuple[np.ndarray, np.ndarray]:
    """(which objects have a label, their labels as strings)."""
    name = ctx.cfg.label_column
    column = ctx.column(name)
    if column is None:
        raise ConfigError(f"config key 'analyse.label_column' = '{name}' is neither a catalog "
                          "column nor a column of an earlier analysis (ref_label comes from "
                          "\"crossmatch\" with analyse.reference_label, listed before "
                          "\"quality\")")
    text = column.astype("string").str.strip()
    has = (column.notna() & text.notna() & (text != "")).to_numpy()
    return has, text.to_numpy(dtype=object)[has].astype(str)


class QualityConfig(ComponentConfig):
    """`[analyse]` keys of "quality": the label judged against, and k of the kNN purity."""

    label_column: str = ""
    quality_k: int = Field(10, ge=1)


@ANALYSES.register("quality")
def quality(ctx: AnalysisContext) -> AnalysisResult:
    cfg = ctx.cfg
    has, labels = labels_of(ctx)
    result = AnalysisResult()
    metrics = result.metrics
    metrics[PREFIX + "n_labelled"] = int(has.sum())
    metrics[PREFIX + "n_classes"] = len(np.unique(labels))
    if ctx.map is not None:
        metrics[PREFIX + "map_neighbourhood_recall"] = neighbourhood_recall(
            ctx.vectors, ctx.map, cfg.quality_k, cfg.seed)
    if len(np.unique(labels)) < 2 or len(labels) < 3:
        result.notes.append(f"quality: '{cfg.label_column}' gives {len(labels)} labelled "
                            f"objects in {len(np.unique(labels))} classes; purity and "
                            "silhouette need two classes")
        return result
    spaces = {"": ctx.vectors[has]}
    if ctx.map is not None:
        spaces["map_"] = ctx.map[has]
    per_class = pd.DataFrame({"label": labels})
    for prefix, x in spaces.items():
        purity = purity_per_object(x, labels, cfg.quality_k)
        metrics[PREFIX + prefix + "knn_purity"] = float(purity.mean())
        score = silhouette(x, labels, cfg.seed)
        if score is not None:
            metrics[PREFIX + prefix + "silhouette"] = score
        per_class[prefix + "knn_purity"] = purity
        if not prefix:
            column = np.full(len(ctx.ids), np.nan)
            column[has] = purity
            result.columns["label_purity"] = column
    metrics[PREFIX + "knn_purity_chance"] = chance_purity(labels)
    table = per_class.groupby("label").mean()
    table.insert(0, "n_objects", per_class.groupby("label").size())
    table.insert(1, "chance", (table["n_objects"] - 1) / (len(labels) - 1))
    result.tables[BY_CLASS] = table.reset_index()
    return result


quality.config_class = QualityConfig
