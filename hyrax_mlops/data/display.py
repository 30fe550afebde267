"""Display stretches for cutouts (astropy.visualization): per-band asinh, zscale or linear,
and Lupton's colour-preserving composite for three bands; and an RGB image as a small PNG
data URI, for web pages and notebooks."""

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


def _per_band(cube: np.ndarray, show) -> np.ndarray:
    """`show(band)` on each band (each in [0, 1]), as an (h, w, 3) image."""
    return _to_rgb(np.stack([show(band) for band in np.asarray(cube, dtype=np.float64)]))


def linear(cube: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(bands, h, w) -> (h, w, 3) in [0, 1], each band scaled between the 1st and 99.8th
    percentile of `reference` (default: the cube): for data that is already normalised."""
    from astropy.visualization import AsymmetricPercentileInterval, LinearStretch, ManualInterval

    ref = np.asarray(cube if reference is None else reference, dtype=np.float64)
    limits = iter([AsymmetricPercentileInterval(1, 99.8).get_limits(b) for b in ref])
    return _per_band(cube, lambda band: (LinearStretch() + ManualInterval(*next(limits)))(band))


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.shape[0] != 3:
        img = np.repeat(img.mean(axis=0, keepdims=True), 3, axis=0)
    return np.clip(np.transpose(img, (1, 2, 0))[::-1], 0, 1)


def zscale(cube: np.ndarray) -> np.ndarray:
    """(bands, h, w) -> (h, w, 3) in [0, 1], each band linear between its IRAF zscale limits."""
    from astropy.visualization import LinearStretch, ZScaleInterval

    return _per_band(cube, LinearStretch() + ZScaleInterval())


def stretch(cube: np.ndarray, q: float = 8.0) -> np.ndarray:
    """(bands, h, w) pixels -> (h, w, 3) floats in [0, 1], top row first (FITS rows flipped).

    Each band from its median (0) to its median plus the 99.5th percentile above it (1), then
    asinh(q x) / asinh(q). One band is shown grey; three as RGB; others as the mean of all.
    """
    from astropy.visualization import AsinhStretch, ManualInterval

    def show(band: np.ndarray) -> np.ndarray:
        med = float(np.median(band))
        top = float(np.percentile(band - med, 99.5))
        return (AsinhStretch(a=1 / q) + ManualInterval(med, med + (top if top > 0 else 1.0)))(
            band)

    return _per_band(cube, show)


def lupton(cube: np.ndarray, q: float = 8.0) -> np.ndarray:
    """Three bands (red, green, blue) as one asinh composite that keeps each pixel's colour
    (Lupton et al. 2004, astropy's make_lupton_rgb), bands from their medians, brightened
    as one so the 99.5th percentile pixel is white; other band counts as `stretch`."""
    from astropy.visualization import make_lupton_rgb

    cube = np.asarray(cube, dtype=np.float64)
    if cube.shape[0] != 3:
        return stretch(cube, q)
    bands = np.clip(cube - np.median(cube, axis=(1, 2), keepdims=True), 0, None)
    top = float(np.percentile(bands.sum(axis=0) / 3, 99.5)) or 1.0
    with np.errstate(invalid="ignore", divide="ignore"):  # blank pixels: 0/0, shown black
        rgb = make_lupton_rgb(*bands, minimum=0, stretch=top, Q=q, output_dtype=np.float64)
    rgb = np.nan_to_num(rgb)
    white = float(np.percentile(rgb.max(axis=2), 99.5)) or 1.0  # one scale: colours stay
    return np.clip(rgb[::-1] / white, 0, 1)


STRETCHES = {"asinh": lambda cube: stretch(cube), "lupton": lambda cube: lupton(cube),
             "zscale": zscale, "linear": linear}
