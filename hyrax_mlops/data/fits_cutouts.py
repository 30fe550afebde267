"""Read one FITS cutout as a float32 (bands, height, width) cube.

Supported layouts: a 2D image (one band), a 3D cube (bands first) in the first image HDU,
or one 2D HDU per band selected by EXTNAME.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def read_cutout(path: Path, bands: Sequence[str] = ()) -> np.ndarray:
    """Pixels of `path` as float32 (bands, h, w). Raises on unreadable or unsuitable files."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        if bands:
            names = [h.name for h in hdul]
            planes = []
            for band in bands:
                if band.upper() not in names:
                    raise ValueError(f"no HDU named '{band}' (HDUs: {', '.join(names)})")
                data = hdul[band].data
                if data is None or data.ndim != 2:
                    raise ValueError(f"HDU '{band}' is not a 2D image")
                planes.append(data)
            if len({p.shape for p in planes}) > 1:
                raise ValueError(f"band HDUs differ in shape: {[p.shape for p in planes]}")
            cube = np.stack(planes)
        else:
            image = next((h for h in hdul if h.is_image and h.data is not None), None)
            if image is None:
                raise ValueError("no image HDU with data")
            cube = image.data
            if cube.ndim == 2:
                cube = cube[None]
            elif cube.ndim != 3:
                raise ValueError(f"image has {cube.ndim} dimensions; expected 2 or 3")
    return np.asarray(cube, dtype=np.float32)
