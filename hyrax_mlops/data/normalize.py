"""Per-band normalisation, fitted on training objects and stored with the model.

The statistics travel with the train run (`normalization.json`) so inference applies
exactly the transform the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hyrax_mlops.errors import ConfigError

METHODS = ("none", "asinh", "log", "zscore")
_FIT_PIXELS = 1_000_000  # per band: robust statistics need no more, and medians cost O(n)


@dataclass
class FeatureScaler:
    """Catalog features as model inputs: each column (or `log10:column`) standardised with
    training-split statistics; a missing value becomes 0 with its mask 0."""

    names: list[str]
    mean: list[float]
    std: list[float]

    def transform(self, table) -> tuple[np.ndarray, np.ndarray]:
        """(values, mask), both float32 (n, features)."""
        raw = feature_matrix(table, self.names)
        mask = np.isfinite(raw)
        z = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        return np.where(mask, z, 0.0).astype(np.float32), mask.astype(np.float32)


def feature_matrix(table, names: list[str]) -> np.ndarray:
    """float64 (n, features) from catalog columns; `log10:col` takes the log (≤ 0 → missing)."""
    import pandas as pd

    cols = []
    for name in names:
        fn, _, col = name.rpartition(":")
        if col not in table.columns:
            raise ConfigError(f"data.features names '{col}', which is not a catalog column "
                              f"(columns: {', '.join(map(str, table.columns))})")
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(np.float64)
        if fn == "log10":
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(values > 0, np.log10(values), np.nan)
        elif fn:
            raise ConfigError(f"data.features '{name}': the only transform is log10:COLUMN")
        cols.append(values)
    return np.stack(cols, axis=1) if cols else np.empty((len(table), 0))


def fit_features(table, names: list[str]) -> FeatureScaler:
    raw = feature_matrix(table, names)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(raw, axis=0) if len(raw) else np.zeros(len(names))
        std = np.nanstd(raw, axis=0) if len(raw) else np.ones(len(names))
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return FeatureScaler(list(names), [float(v) for v in mean], [float(v) for v in std])


@dataclass
class Normalizer:
    method: str
    center: list[float]  # per band: median (asinh, log) or mean (zscore)
    scale: list[float]  # per band: robust sigma (asinh, log) or std (zscore)
    features: FeatureScaler | None = None  # catalog features, when the model reads them
    series: dict | None = None  # light-curve bands/points and the spectrum grid, when present

    def apply(self, x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
        """Normalise (..., bands, h, w) float32 pixels band by band; `inplace` overwrites a
        float32 `x` (a buffer the caller owns) instead of allocating another."""
        if self.method == "none":
            return x.astype(np.float32, copy=False)
        c = np.asarray(self.center, np.float32)[:, None, None]
        s = np.asarray(self.scale, np.float32)[:, None, None]
        if inplace and x.dtype == np.float32 and x.flags.writeable:
            z = np.subtract(x, c, out=x)
        else:
            z = np.subtract(x, c, dtype=np.float32)
        z /= s
        if self.method == "asinh":
            np.arcsinh(z, out=z)
        elif self.method == "log":
            np.log1p(np.clip(z, 0, None, out=z), out=z)
        return z

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        features = FeatureScaler(**d["features"]) if d.get("features") else None
        return cls(method=d["method"], center=list(d["center"]), scale=list(d["scale"]),
                   features=features, series=d.get("series"))


def fit_normalizer(method: str, images: np.ndarray) -> Normalizer:
    """Per-band statistics of `images` (n, bands, h, w) for `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown normalisation '{method}'; choose one of {', '.join(METHODS)}")
    bands = images.shape[1]
    per_band = np.moveaxis(images, 1, 0).reshape(bands, -1)
    per_band = per_band[:, :: max(1, per_band.shape[1] // _FIT_PIXELS)].astype(np.float64)
    if method == "zscore":
        center, scale = per_band.mean(axis=1), per_band.std(axis=1)
    else:
        center = np.median(per_band, axis=1)
        scale = 1.4826 * np.median(np.abs(per_band - center[:, None]), axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    if method == "none":
        center, scale = np.zeros(bands), np.ones(bands)
    return Normalizer(method, [float(v) for v in center], [float(v) for v in scale])
