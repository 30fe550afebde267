"""Chroma: a PersistentClient on disk by default, or a Chroma server given `index.url`
(with a bearer token from `$CHROMA_TOKEN` or the file `$CHROMA_TOKEN_FILE`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pydantic import Field

from hyrax_mlops.config import ComponentConfig, IndexConfig
from hyrax_mlops.redact import redact
from hyrax_mlops.vectors import VECTOR_BACKENDS
from hyrax_mlops.vectors.base import CollectionNotFound, VectorIndex, unreachable

_METADATA_TYPES = (str, int, float, bool)


def server_token() -> str | None:
    """The Chroma server's token: `$CHROMA_TOKEN`, or the file named by `$CHROMA_TOKEN_FILE`.
    Never part of the config, so never logged."""
    import os

    if os.environ.get("CHROMA_TOKEN"):
        return os.environ["CHROMA_TOKEN"].strip()
    path = os.environ.get("CHROMA_TOKEN_FILE")
    if path:
        return Path(path).expanduser().read_text().strip()
    return None


def _client(location: dict[str, Any]):
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if location.get("url"):
        u = urlparse(location["url"])
        token = server_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return chromadb.HttpClient(host=u.hostname or "127.0.0.1", port=u.port or 8000,
                                   ssl=u.scheme == "https", headers=headers, settings=settings)
    if not Path(location["path"]).is_dir():
        # Chroma caches one client per path in-process; a folder deleted under it would
        # otherwise be served from that stale cache.
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    return chromadb.PersistentClient(path=location["path"], settings=settings)


def _where(location: dict[str, Any]) -> str:
    return str(location.get("url") or location.get("path"))


def _fix(location: dict[str, Any]) -> str:
    if location.get("url"):
        return ("check that the Chroma server at index.url is running and that $CHROMA_TOKEN "
                "(or $CHROMA_TOKEN_FILE) holds a token it accepts.")
    return "check that index.path is a readable Chroma directory."


def _is_not_found(exc: BaseException) -> bool:
    from chromadb.errors import NotFoundError

    return isinstance(exc, NotFoundError) or (  # a local store's older spelling
        isinstance(exc, ValueError) and "does not exist" in str(exc)
        and not isinstance(exc, OSError))


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    """Chroma takes only str/int/float/bool values and no None: drop the rest, and NaN."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, _METADATA_TYPES) and not (isinstance(v, float) and v != v):
            out[str(k)] = v
    return out


class ChromaConfig(ComponentConfig):
    """HNSW's keys in `[index]` when `backend = "chroma"`."""

    ef_construction: int = Field(200, ge=1)  # build effort
    ef_search: int = Field(200, ge=1)  # query effort: recall against latency
    max_neighbors: int = Field(32, ge=2)  # graph degree (M)


@VECTOR_BACKENDS.register("chroma")
class ChromaIndex(VectorIndex):
    config_class = ChromaConfig
    capabilities = {"max_k": None, "metadata": True, "metrics": ("cosine", "l2", "ip")}

    def __init__(self, collection, location: dict[str, Any], client) -> None:
        self._col, self._location, self._client = collection, location, client

    @classmethod
    def identity(cls, cfg: IndexConfig) -> dict[str, Any]:
        # ef_search too: Chroma keeps it in the collection's configuration (a query can't
        # choose it), so a run with another ef_search gets its own collection rather than
        # silently changing how an earlier run's index searches.
        return {"metric": cfg.metric, "ef_construction": cfg.ef_construction,
                "max_neighbors": cfg.max_neighbors, "ef_search": cfg.ef_search}

    @classmethod
    def open(cls, cfg: IndexConfig, name: str, *, create: bool) -> ChromaIndex:
        location = ({"url": cfg.url} if cfg.url
                    else {"path": str(Path(cfg.path or ".hyrax/chroma").expanduser().resolve())})
        if not create:
            return cls.reopen(location, name)
        try:
            client = _client(location)
            hnsw = {"space": cfg.metric, "ef_construction": cfg.ef_construction,
                    "ef_search": cfg.ef_search, "max_neighbors": cfg.max_neighbors}
            col = client.get_or_create_collection(
                name, configuration={"hnsw": hnsw}, embedding_function=None)
        except Exception as exc:
            raise unreachable("chroma", _where(location), exc, _fix(location)) from None
        return cls(col, location, client)

    @classmethod
    def exists(cls, location: dict[str, Any], name: str) -> int | None:
        if "path" in location and not Path(location["path"]).is_dir():
            return None
        return super().exists(location, name)

    @classmethod
    def reopen(cls, location: dict[str, Any], name: str) -> ChromaIndex:
        try:
            client = _client(location)
            col = client.get_collection(name, embedding_function=None)
        except Exception as exc:
            if _is_not_found(exc):
                raise CollectionNotFound(f"no Chroma collection '{name}' at "
                                         f"{redact(_where(location))}") from None
            raise unreachable("chroma", _where(location), exc, _fix(location)) from None
        return cls(col, location, client)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        step = self._client.get_max_batch_size()
        for i in range(0, len(ids), step):
            chunk = slice(i, i + step)
            self._col.upsert(
                ids=list(ids[chunk]), embeddings=np.asarray(vectors[chunk], np.float32),
                metadatas=[_clean(m) for m in metadatas[chunk]] if metadatas else None,
            )

    def query(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        # Chroma returns fewer than k when the collection is smaller (no count() per query:
        # it costs more than the search itself)
        res = self._col.query(query_embeddings=np.asarray(vectors, np.float32),
                              n_results=k, include=["distances"])
        return [list(zip(ids, map(float, d), strict=True))
                for ids, d in zip(res["ids"], res["distances"], strict=True)]

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        got = self._col.get(ids=list(ids), include=["embeddings"])
        by_id = dict(zip(got["ids"], got["embeddings"], strict=True))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"ids not in the index: {', '.join(missing[:10])}")
        return np.stack([np.asarray(by_id[i], np.float32) for i in ids])

    def count(self) -> int:
        return self._col.count()

    def location(self) -> dict[str, Any]:
        return {"backend": "chroma", **self._location}
