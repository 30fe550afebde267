"""Display stretches for cutouts: per-band asinh, RGB composite for three bands; and an
RGB image as a small PNG data URI, for web pages and notebooks."""

from __future__ import annotations

import base64
import io

import numpy as np


def png_data_uri(rgb: np.ndarray, size: int) -> str:
    """(h, w, 3) in [0, 1] -> a PNG data URI `size` pixels a side (nearest-neighbour, so
    pixels stay pixels)."""
    from PIL import Image

    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def linear(cube: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(bands, h, w) -> (h, w, 3) in [0, 1], each band scaled between the 1st and 99.8th
    percentile of `reference` (default: the cube): for data that is already normalised."""
    ref = np.asarray(cube if reference is None else reference, dtype=np.float64)
    lo = np.percentile(ref, 1, axis=(1, 2), keepdims=True)
    hi = np.percentile(ref, 99.8, axis=(1, 2), keepdims=True)
    img = (np.asarray(cube, dtype=np.float64) - lo) / np.where(hi > lo, hi - lo, 1.0)
    return _to_rgb(img)


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.shape[0] != 3:
        img = np.repeat(img.mean(axis=0, keepdims=True), 3, axis=0)
    return np.clip(np.transpose(img, (1, 2, 0))[::-1], 0, 1)


def zscale(cube: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> (h, w, 3) in [0, 1], each band linear between its IRAF zscale limits."""
    from astropy.visualization import ZScaleInterval

    interval = ZScaleInterval()
    img = np.stack([_unit(band, *interval.get_limits(band)) for band in np.asarray(cube, float)])
    return _to_rgb(img)


def _unit(band: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (band - lo) / (hi - lo if hi > lo else 1.0)


STRETCHES = {"asinh": lambda cube: stretch(cube), "zscale": zscale, "linear": linear}


def stretch(cube: np.ndarray, q: float = 8.0) -> np.ndarray:
    """(bands, h, w) pixels -> (h, w, 3) floats in [0, 1], top row first (FITS rows flipped).

    Each band: subtract its median, scale by its 99.5th percentile, then asinh(q * x) /
    asinh(q). One band is shown grey; three as RGB; others as the mean of all bands.
    """
    cube = np.asarray(cube, dtype=np.float64)
    med = np.median(cube, axis=(1, 2), keepdims=True)
    top = np.percentile(cube - med, 99.5, axis=(1, 2), keepdims=True)
    x = np.clip((cube - med) / np.where(top > 0, top, 1.0), 0, None)
    return _to_rgb(np.arcsinh(q * x) / np.arcsinh(q))
