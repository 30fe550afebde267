"""The small surface every vector backend offers; callers check `capabilities` first.

Opening a collection fails in one of two ways, and they must not be confused:
`CollectionNotFound` when the backend answered that the collection is not there (a reused
index run is then rebuilt), and `IndexUnreachable` for everything else (connection refused,
401/403, 5xx, a bad path): that is the user's to fix, never a reason to re-index.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hyrax_mlops.config import IndexConfig
from hyrax_mlops.errors import HyraxError, LineageError
from hyrax_mlops.redact import redact


class FrameRecords(Sequence):
    """A table's rows as metadata dicts, made a slice at a time as a backend upserts its
    chunks: ten million rows are never ten million dicts at once (3 GB and a minute)."""

    def __init__(self, frame) -> None:
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.frame.iloc[i].to_dict("records")
        return self.frame.iloc[[i]].to_dict("records")[0]


class CollectionNotFound(LineageError, KeyError):
    """The backend answered: no such collection (deleted, or never made)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class IndexUnreachable(HyraxError):
    """The index's store could not be asked (refused, unauthorised, failing, unreadable)."""


def unreachable(backend: str, where: str, exc: BaseException, fix: str) -> IndexUnreachable:
    """An `IndexUnreachable` naming the backend, the (redacted) location, the cause and `fix`."""
    cause = redact(f"{type(exc).__name__}: {exc}".strip())
    if len(cause) > 400:
        cause = cause[:400] + "..."
    return IndexUnreachable(
        f"cannot reach the {backend} index at {redact(where)} ({cause}). Fix: {fix} "
        "An index that cannot be reached is not rebuilt: once it answers, run again "
        "(or pass --force to build a new one).")


class VectorIndex(ABC):
    """A named collection of (id, vector, metadata)."""

    capabilities: ClassVar[dict[str, Any]] = {"max_k": None, "metadata": True}

    @classmethod
    def identity(cls, cfg: IndexConfig) -> dict[str, Any]:
        """The settings that change what a collection holds (they name it, with the backend).
        Query-time settings a run records in its `location()` do not belong here."""
        return {"metric": cfg.metric}

    @classmethod
    @abstractmethod
    def open(cls, cfg: IndexConfig, name: str, *, create: bool) -> VectorIndex:
        """Open collection `name` (create it when `create`, else it must exist)."""

    @classmethod
    @abstractmethod
    def reopen(cls, location: dict[str, Any], name: str) -> VectorIndex:
        """Open an existing collection from the `location()` an index run recorded: raises
        `CollectionNotFound` when it is gone, `IndexUnreachable` when the store can't be asked."""

    @classmethod
    def exists(cls, location: dict[str, Any], name: str) -> int | None:
        """Size of collection `name` at a recorded `location`, or None if it is gone.
        A store that cannot be reached raises `IndexUnreachable`: it is not "gone"."""
        try:
            index = cls.reopen(location, name)
        except CollectionNotFound:
            return None
        try:
            return index.count()
        except HyraxError:
            raise
        except Exception as exc:
            where = str(location.get("url") or location.get("uri") or location.get("path"))
            raise unreachable(location.get("backend", cls.__name__), where, exc,
                              "check that the index's store is up and readable.") from None

    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        """Insert or replace: re-adding an id never duplicates it. `ids` may be a numpy array
        of text (the index stage hands ten million that way): slice it, a chunk at a time."""

    @abstractmethod
    def query(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query vector, the k nearest (id, distance), nearest first."""

    def prewarm(self) -> None:
        """Load what queries read into memory now, so the first ones are as fast as the
        rest: for a long-lived caller (the app), never needed for correct answers. Most
        backends hold their index in memory once opened, and do nothing here."""
        return None

    @abstractmethod
    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of `ids`, in the order given; KeyError names missing ids."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def location(self) -> dict[str, Any]:
        """Where the collection lives, JSON-safe: recorded in the index run."""
