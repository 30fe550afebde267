"""Per-band normalisation, fitted on training objects and stored with the model.

The statistics travel with the train run (`normalization.json`) so inference applies
exactly the transform the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("none", "asinh", "log", "zscore")
_FIT_PIXELS = 1_000_000  # per band: robust statistics need no more, and medians cost O(n)


@dataclass
class Normalizer:
    method: str
    center: list[float]  # per band: median (asinh, log) or mean (zscore)
    scale: list[float]  # per band: robust sigma (asinh, log) or std (zscore)

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
        return cls(method=d["method"], center=list(d["center"]), scale=list(d["scale"]))


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
