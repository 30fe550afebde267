"""Where fetched cutouts wait until the dataset is assembled, and how an answer is checked.

Every FITS a service returns is opened and checked (an image HDU, 2D, the layers asked for,
big enough for the stamp) before it counts; its centre `stamp_size` pixels per layer are
staged as a small .npy named by object and band, written atomically so a `kill -9` never
leaves half a file that looks done.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from hyrax_mlops.downloader.engine import InvalidResponse

LAYER_EXTNAMES = {"image": "IMAGE", "mask": "MASK", "variance": "VARIANCE"}


class TooSmall(Exception):
    """The service answered a cutout smaller than the stamp (e.g. at a survey edge)."""


def item_key(object_id: str, band: str) -> str:
    return f"{object_id}|{band}"


def split_item(key: str) -> tuple[str, str]:
    object_id, band = key.rsplit("|", 1)
    return object_id, band


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central size x size pixels of a 2D (or layer-first 3D) array."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise TooSmall(f"cutout is {h}x{w} px, smaller than the {size}x{size} stamp")
    y0, x0 = (h - size) // 2, (w - size) // 2
    return image[..., y0:y0 + size, x0:x0 + size]


def read_layers(body: bytes, layers: list[str], size: int) -> np.ndarray:
    """float32 (layers, size, size) from one FITS answer; `InvalidResponse` when it is not a
    usable FITS, `TooSmall` when it is a good one that cannot hold the stamp."""
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(body), memmap=False) as hdul:
            names = [h.name for h in hdul]
            planes = []
            for layer in layers:
                ext = LAYER_EXTNAMES[layer]
                if ext in names:
                    data = hdul[ext].data
                elif layer == "image":  # single-HDU answers: the first image with data
                    data = next((h.data for h in hdul if h.is_image and h.data is not None),
                                None)
                else:
                    raise InvalidResponse(f"no {ext} HDU (HDUs: {', '.join(names)})")
                if data is None or data.ndim != 2:
                    raise InvalidResponse(f"{ext} is not a 2D image")
                planes.append(np.asarray(data, dtype=np.float32))
    except InvalidResponse:
        raise
    except Exception as exc:  # astropy raises many kinds for a broken file
        raise InvalidResponse(f"not a readable FITS: {type(exc).__name__}: {exc}"[:300]) from None
    if len({p.shape for p in planes}) > 1:
        raise InvalidResponse(f"layers differ in shape: {[p.shape for p in planes]}")
    return np.ascontiguousarray(center_crop(np.stack(planes), size))


class CutoutStore:
    """Staged cutouts of one download run: `<root>/<band>/<object_id>.npy`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, object_id: str, band: str) -> Path:
        return self.root / quote(band, safe="") / f"{quote(object_id, safe='')}.npy"

    def put(self, object_id: str, band: str, stamp: np.ndarray) -> None:
        path = self.path(object_id, band)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{id(stamp)}")
        with open(tmp, "wb") as fh:
            np.save(fh, stamp, allow_pickle=False)
        os.replace(tmp, path)

    def has(self, object_id: str, band: str) -> bool:
        return self.path(object_id, band).is_file()

    def get(self, object_id: str, band: str) -> np.ndarray:
        return np.load(self.path(object_id, band), allow_pickle=False)
