"""The small surface every vector backend offers; callers check `capabilities` first."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hyrax_mlops.config import IndexConfig


class VectorIndex(ABC):
    """A named collection of (id, vector, metadata)."""

    capabilities: ClassVar[dict[str, Any]] = {"max_k": None, "metadata": True}

    @classmethod
    @abstractmethod
    def open(cls, cfg: IndexConfig, name: str, *, create: bool) -> VectorIndex:
        """Open collection `name` (create it when `create`, else it must exist)."""

    @classmethod
    @abstractmethod
    def reopen(cls, location: dict[str, Any], name: str) -> VectorIndex:
        """Open an existing collection from the `location()` an index run recorded."""

    @classmethod
    def exists(cls, location: dict[str, Any], name: str) -> int | None:
        """Size of collection `name` at a recorded `location`, or None if it is gone."""
        try:
            return cls.reopen(location, name).count()
        except Exception:
            return None

    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        """Insert or replace: re-adding an id never duplicates it."""

    @abstractmethod
    def query(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query vector, the k nearest (id, distance), nearest first."""

    @abstractmethod
    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of `ids`, in the order given; KeyError names missing ids."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def location(self) -> dict[str, Any]:
        """Where the collection lives, JSON-safe: recorded in the index run."""
