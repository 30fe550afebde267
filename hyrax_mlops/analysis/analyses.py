"""Analyses of an infer run's embeddings, looked up by name: `analysis(ctx) -> AnalysisResult`.

An analysis reads what the `analyse` stage gathered (`AnalysisContext`: the embeddings, the
dataset's catalog rows in the same order, a 2D map and cutouts when there are some, and the
per-object columns earlier analyses made) and returns tables, figures, run-level metrics and
per-object columns. It never talks to MLflow: the stage logs what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hyrax_mlops.config import AnalyseConfig
from hyrax_mlops.registry import Registry


@dataclass
class AnalysisContext:
    cfg: AnalyseConfig
    ids: np.ndarray  # object_id of each embedding, as str
    vectors: np.ndarray  # float32 (n, dim) embeddings, row i is ids[i]
    catalog: pd.DataFrame  # the dataset's catalog rows, in the order of `ids`
    map: np.ndarray | None = None  # (n, 2) coordinates of a reduce run's 2D map, same order
    map_name: str = ""  # which map, e.g. "UMAP 2D"
    images: Callable[[np.ndarray], np.ndarray] | None = None  # rows -> cutouts; None: no pixels
    columns: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-object columns so far
    reference: pd.DataFrame | None = None  # the crossmatch reference catalog, once read
    statistics: pd.DataFrame | None = None  # per-object stamp statistics, same order as ids
    residuals: Callable[[np.ndarray], np.ndarray] | None = None  # rows -> residual cubes

    def __post_init__(self) -> None:
        if self.columns.empty:
            self.columns = pd.DataFrame({"object_id": self.ids})

    def column(self, name: str) -> pd.Series | None:
        """A per-object column by name: made by an earlier analysis, else from the catalog."""
        if name in self.columns:
            return self.columns[name].reset_index(drop=True)
        if name in self.catalog:
            return self.catalog[name].reset_index(drop=True)
        return None


@dataclass
class AnalysisResult:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # artifact path -> table
    figures: dict[str, Any] = field(default_factory=dict)  # artifact path -> matplotlib figure
    metrics: dict[str, float] = field(default_factory=dict)  # run-level numbers
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # per object, order of ids
    notes: list[str] = field(default_factory=list)  # what a user should know (said, and tagged)
    tags: dict[str, str] = field(default_factory=dict)  # run-level words, e.g. the space clustered


Analysis = Callable[[AnalysisContext], AnalysisResult]
ANALYSES: Registry[Analysis] = Registry(
    "analysis", plural="analyses",
    builtins=("hyrax_mlops.analysis.clusters", "hyrax_mlops.analysis.crossmatch",
              "hyrax_mlops.analysis.outliers", "hyrax_mlops.analysis.quality"))
