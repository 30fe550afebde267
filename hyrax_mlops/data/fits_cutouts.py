"""Read one FITS cutout as a float32 (bands, height, width) cube, with its celestial WCS.

Supported layouts: a 2D image (one band), a 3D cube (bands first) in the first image HDU,
or one 2D HDU per band selected by EXTNAME. The WCS is that of the HDU the pixels come from
(the first band's HDU for one HDU per band); a header without a celestial WCS gives none.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def read_cutout(path: Path, bands: Sequence[str] = ()) -> np.ndarray:
    """Pixels of `path` as float32 (bands, h, w). Raises on unreadable or unsuitable files."""
    return read_stamp(path, bands)[0]


def read_stamp(path: Path, bands: Sequence[str] = ()) -> tuple[np.ndarray, Any]:
    """Pixels of `path` as float32 (bands, h, w) and its celestial `astropy.wcs.WCS` (None when
    the header has none). Raises on unreadable or unsuitable files."""
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)  # a bad file is recorded, not warned
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
                header = hdul[bands[0]].header
            else:
                image = next((h for h in hdul if h.is_image and h.data is not None), None)
                if image is None:
                    raise ValueError("no image HDU with data")
                cube = image.data
                if cube.ndim == 2:
                    cube = cube[None]
                elif cube.ndim != 3:
                    raise ValueError(f"image has {cube.ndim} dimensions; expected 2 or 3")
                header = image.header
            if 0 in cube.shape:
                raise ValueError(f"image has no pixels (shape {list(cube.shape)})")
            wcs = celestial_wcs(header)
    return np.asarray(cube, dtype=np.float32), wcs


def celestial_wcs(header: Any) -> Any:
    """The celestial part of `header`'s WCS, or None when it has none (or it is invalid)."""
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS

    if not any(str(k).startswith("CTYPE") for k in header):
        return None  # no WCS at all: skip the parse
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            return wcs.celestial
    except Exception:  # a broken WCS is no WCS: the pixels may still be good
        return None


def wcs_centre(wcs: Any, shape: Sequence[int]) -> tuple[float, float, Any] | None:
    """(lon, lat) in degrees, in the WCS's own sky frame, and that frame (an astropy
    coordinate frame) of the stamp's centre pixel ((nx-1)/2, (ny-1)/2, 0-based) for a
    (..., ny, nx) stamp; None when the WCS cannot place it on the sky. `to_icrs` converts."""
    from astropy.wcs.utils import wcs_to_celestial_frame

    ny, nx = shape[-2], shape[-1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lon, lat = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
            frame = wcs_to_celestial_frame(wcs)
    except Exception:  # a WCS that is not a sky frame astropy knows
        return None
    if not (np.isfinite(lon) and np.isfinite(lat)):
        return None
    return float(lon), float(lat), frame


def to_icrs(lon: np.ndarray, lat: np.ndarray, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (ra, dec) in degrees of positions given in `frame` (FK5, FK4, Galactic, ...)."""
    from astropy import units as u
    from astropy.coordinates import ICRS, SkyCoord

    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    if isinstance(frame, ICRS):
        return lon % 360.0, lat
    sky = SkyCoord(lon * u.deg, lat * u.deg, frame=frame).icrs
    return sky.ra.deg, sky.dec.deg


def pixel_scale_arcsec(wcs: Any) -> float:
    """The mean pixel size in arcsec (0 when the WCS does not say)."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0
    except Exception:
        return 0.0
    return scale if np.isfinite(scale) else 0.0


def wcs_header_text(wcs: Any) -> str:
    """The WCS as FITS header text (what `astropy.wcs.WCS(fits.Header.fromstring(text))` reads
    back)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wcs.to_header_string(relax=True)
