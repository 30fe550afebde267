"""Deterministic train/val/test assignment by hashing each object id (stable across runs)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def assign_splits(ids: Sequence[str], fractions: Sequence[float], seed: int = 0) -> np.ndarray:
    """An array of 'train'/'val'/'test' per id; adding objects never moves existing ones."""
    u = np.array([zlib.crc32(f"{seed}:{oid}".encode()) / 2**32 for oid in ids])
    edges = np.cumsum(fractions)[:2]
    return np.array(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]
