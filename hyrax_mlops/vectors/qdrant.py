"""Qdrant: embedded on a laptop by default (a folder, `index.path` or `.hyrax/qdrant`), or a
Qdrant server for a team given `index.url`, with an API key from `$QDRANT_API_KEY` or the file
named by `$QDRANT_API_KEY_FILE` (never in the config, so never logged).

Qdrant names points by unsigned integers or UUIDs; object ids are text, so each point's id is
the UUID5 of its object id and the object id itself travels in the payload, unchanged ("00042"
stays "00042"). Scores are turned into the project's distances (smaller is nearer): cosine
`1 - cos`, l2 squared euclidean, ip `1 - dot`, as `vectors.exact` computes them.

Embedded mode searches exhaustively (exact; the `hnsw_*` keys apply on a server) and lets one
process open its folder at a time: this process keeps one client per folder. Requires the
`qdrant` extra.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from hyrax_mlops.config import ComponentConfig, IndexConfig
from hyrax_mlops.errors import ConfigError, HyraxError
from hyrax_mlops.redact import MASK, redact, refuse_userinfo
from hyrax_mlops.vectors import VECTOR_BACKENDS
from hyrax_mlops.vectors.base import (
    CollectionNotFound,
    IndexUnreachable,
    VectorIndex,
    unreachable,
)

# Fixed forever: every point id ever written is uuid5(_NAMESPACE, object id).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "hyrax-mlops:object_id")
_ID_KEY = "_hyrax_id"  # the object id, as given
_NORM_KEY = "_hyrax_norm"  # cosine: the vector's length (Qdrant keeps unit vectors)
_RESERVED = (_ID_KEY, _NORM_KEY)
_METRICS = {"cosine": "Cosine", "l2": "Euclid", "ip": "Dot"}
_DEFAULT_PATH = ".hyrax/qdrant"
# Floats per upsert request: about 20 MB of JSON, under a server's default 32 MB request limit
_MAX_FLOATS = 1_000_000
_READ_CHUNK = 1000  # ids per retrieve
_QUERY_CHUNK = 100  # query vectors per batch request


class QdrantConfig(ComponentConfig):
    """Qdrant's keys in `[index]` when `backend = "qdrant"`."""

    hnsw_m: int = Field(16, ge=0)  # graph degree; 0 = no graph (exact search), server only
    hnsw_ef_construct: int = Field(200, ge=4)  # build effort, server only
    hnsw_ef: int = Field(128, ge=1)  # query effort: recall against latency, server only
    on_disk: bool = False  # vectors and graph memory-mapped from disk instead of in RAM
    upsert_batch: int = Field(10_000, ge=1)  # points per upsert request (fewer for wide vectors)
    timeout_s: int = Field(60, ge=1)  # a server request's time limit


def api_key() -> str | None:
    """The server's API key: `$QDRANT_API_KEY`, or the file named by `$QDRANT_API_KEY_FILE`.
    Never part of the config, so never logged."""
    if os.environ.get("QDRANT_API_KEY"):
        return os.environ["QDRANT_API_KEY"].strip()
    path = os.environ.get("QDRANT_API_KEY_FILE")
    if path:
        return Path(path).expanduser().read_text().strip() or None
    return None


def point_id(object_id: str) -> str:
    """The Qdrant point id of an object id: its UUID5, the same in every process and run."""
    return str(uuid.uuid5(_NAMESPACE, str(object_id)))


def _qdrant():
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError:
        raise ConfigError("index.backend 'qdrant' needs the qdrant-client package: "
                          "pip install 'hyrax-mlops[qdrant]'") from None
    return qdrant_client, models


def _where(location: dict[str, Any]) -> str:
    return str(location.get("url") or location.get("path"))


def _fix(location: dict[str, Any]) -> str:
    if location.get("url"):
        return ("check that the Qdrant server at index.url is running and that $QDRANT_API_KEY "
                "(or $QDRANT_API_KEY_FILE) holds a key it accepts.")
    return ("check that index.path is a readable Qdrant folder and that no other process (the "
            "app, a notebook) has it open: embedded Qdrant allows one process at a time; "
            "share an index between processes through a Qdrant server (index.url).")


def _unreachable(location: dict[str, Any], exc: BaseException) -> IndexUnreachable:
    """`unreachable(...)` for Qdrant, with the API key masked should the cause quote it."""
    err = unreachable("qdrant", _where(location), exc, _fix(location))
    key = api_key() if location.get("url") else None
    if key and key in str(err):
        err = IndexUnreachable(str(err).replace(key, MASK))
    return err


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    """JSON payload values: str/int/float/bool (numpy scalars as Python's); None, NaN and
    infinities dropped, and so is anything else, as for the other backends."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if isinstance(v, (str, int, float, bool)) and str(k) not in _RESERVED:
            out[str(k)] = v
    return out


# ---------------------------------------------------------------- embedded clients, one per path
class _Local:
    """An embedded client and the folder it locked (device and inode: a folder deleted and made
    anew under the same name is another store)."""

    def __init__(self, client: Any, stamp: tuple[int, int]) -> None:
        self.client, self.stamp, self.lock = client, stamp, threading.RLock()
        self.relaxed: set[str] = set()


_LOCAL: dict[str, _Local] = {}
_LOCAL_LOCK = threading.Lock()


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isfile(os.path.join(path, "meta.json")) else None


def _forget(path: str) -> None:
    """Close and drop this process's client of `path` (its folder is gone or replaced)."""
    with _LOCAL_LOCK:
        entry = _LOCAL.pop(path, None)
    if entry is not None:
        with contextlib.suppress(Exception):
            entry.client.close()


@atexit.register
def _close_all() -> None:
    """Release every folder's lock while Python can still import what closing needs (left to
    the clients' own __del__, at shutdown, it fails noisily)."""
    for path in list(_LOCAL):
        _forget(path)


def _local(path: str) -> _Local:
    """This process's client of the embedded store at `path`, made on first use: a second
    client of the same folder would fail on its lock."""
    with _LOCAL_LOCK:
        entry = _LOCAL.get(path)
        if entry is not None and entry.stamp == _stamp(path):
            return entry
    if entry is not None:  # the folder was deleted (or replaced) under the cached client
        _forget(path)
    qdrant_client, _ = _qdrant()
    with _LOCAL_LOCK:
        entry = _LOCAL.get(path)
        if entry is None:
            # several threads (the app's) share it under entry.lock: sqlite must allow that
            client = qdrant_client.QdrantClient(path=path, force_disable_check_same_thread=True)
            entry = _LOCAL[path] = _Local(client, _stamp(path) or (0, 0))
        return entry


def _relax_sync(entry: _Local, name: str) -> None:
    """Embedded Qdrant commits each point in its own SQLite transaction, synced to disk: a few
    ms apiece, an hour per million points. In WAL mode with synchronous=NORMAL a commit is not
    synced (checkpoints are): a crash may lose the last points, never the file, and an index
    holding fewer points than its run recorded is rebuilt. Best effort: it reaches into
    qdrant-client's embedded storage and does nothing if that has changed."""
    if name in entry.relaxed:
        return
    try:
        conn = entry.client._client.collections[name].storage.storage
    except (AttributeError, KeyError, TypeError):
        return
    if isinstance(conn, sqlite3.Connection):
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    entry.relaxed.add(name)


@VECTOR_BACKENDS.register("qdrant")
class QdrantIndex(VectorIndex):
    """A Qdrant collection: embedded in a folder, or on a Qdrant server."""

    config_class = QdrantConfig
    capabilities = {"max_k": None, "metadata": True, "metrics": tuple(_METRICS)}

    def __init__(self, client: Any, name: str, location: dict[str, Any],
                 local: _Local | None) -> None:
        self._client, self._name, self._location, self._local = client, name, location, local
        self._metric: str | None = None  # known once the collection exists

    # ------------------------------------------------------------------------ opening
    @classmethod
    def identity(cls, cfg: IndexConfig) -> dict[str, Any]:
        """The metric and the graph's build settings: what the collection is made with."""
        # hnsw_ef, upsert_batch and timeout_s are not here: they are chosen per request, from
        # the location each run records, so runs differing only in them share a collection.
        return {"metric": cfg.metric, "hnsw_m": cfg.hnsw_m,
                "hnsw_ef_construct": cfg.hnsw_ef_construct, "on_disk": cfg.on_disk}

    @classmethod
    def open(cls, cfg: IndexConfig, name: str, *, create: bool) -> QdrantIndex:
        """Open `name` in the folder or on the server `cfg` names (made at the first upsert)."""
        where = ({"url": cfg.url} if cfg.url
                 else {"path": str(Path(cfg.path or _DEFAULT_PATH).expanduser().resolve())})
        location = {**where, "metric": cfg.metric, "hnsw_m": cfg.hnsw_m,
                    "hnsw_ef_construct": cfg.hnsw_ef_construct, "on_disk": cfg.on_disk,
                    "hnsw_ef": cfg.hnsw_ef, "upsert_batch": cfg.upsert_batch,
                    "timeout_s": cfg.timeout_s}
        if not create:
            return cls.reopen(location, name)
        index = cls._connect(location, name)
        index._load(missing_ok=True)
        return index

    @classmethod
    def reopen(cls, location: dict[str, Any], name: str) -> QdrantIndex:
        """Open the existing collection `name` at a recorded `location`."""
        path = location.get("path")
        if path and not location.get("url") and _stamp(path) is None:
            # nothing to open (reopening must not make an empty store), or not a folder
            _forget(path)
            if Path(path).is_dir() or not Path(path).exists():
                raise CollectionNotFound(f"no Qdrant collection '{name}' at {path} "
                                         "(no Qdrant store there)")
            raise _unreachable(location, NotADirectoryError(f"{path} is not a folder"))
        index = cls._connect(location, name)
        index._load(missing_ok=False)
        return index

    @classmethod
    def exists(cls, location: dict[str, Any], name: str) -> int | None:
        """Size of `name` at `location`, None when it (or its folder) is gone."""
        if location.get("path") and not location.get("url") and \
                not Path(location["path"]).exists():
            return None
        return super().exists(location, name)

    @classmethod
    def _connect(cls, location: dict[str, Any], name: str) -> QdrantIndex:
        location = {"backend": "qdrant", **location}
        try:
            if location.get("url"):
                refuse_userinfo("index.url", location["url"],
                                "QDRANT_API_KEY or QDRANT_API_KEY_FILE")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            if location.get("url"):
                qdrant_client, _ = _qdrant()
                client = qdrant_client.QdrantClient(
                    url=location["url"], api_key=api_key(),
                    timeout=int(location.get("timeout_s", 60)), check_compatibility=False)
                return cls(client, name, location, None)
            local = _local(location["path"])
            return cls(local.client, name, location, local)
        except HyraxError:
            raise
        except Exception as exc:
            raise _unreachable(location, exc) from None

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        """One conversation with the store: serialised for an embedded client (threads share
        it); a failure to reach it becomes IndexUnreachable (with the key masked)."""
        lock = self._local.lock if self._local else contextlib.nullcontext()
        with lock:
            try:
                yield
            except (HyraxError, KeyError, ValueError):
                raise
            except Exception as exc:
                raise _unreachable(self._location, exc) from None

    def _load(self, *, missing_ok: bool) -> None:
        """Learn the collection's metric (it, not the caller, says how to read scores)."""
        with self._asking():
            found = self._client.collection_exists(self._name)
            if found:
                params = self._client.get_collection(self._name).config.params
                distance = getattr(params.vectors, "distance", None)
        if not found:
            if missing_ok:
                return
            raise CollectionNotFound(f"no Qdrant collection '{self._name}' at "
                                     f"{redact(_where(self._location))}")
        by_distance = {v: k for k, v in _METRICS.items()}
        self._metric = by_distance.get(getattr(distance, "value", distance))
        if self._metric is None:
            raise HyraxError(f"Qdrant collection '{self._name}' uses distance {distance}, "
                             "which hyrax-mlops does not write (cosine, l2 or ip).")
        if self._local is not None:
            _relax_sync(self._local, self._name)

    def _create(self, dim: int) -> None:
        _, models = _qdrant()
        loc = self._location
        metric = loc.get("metric", "cosine")
        with self._asking():
            self._client.create_collection(
                self._name,
                vectors_config=models.VectorParams(size=dim, distance=models.Distance(
                    _METRICS[metric]), on_disk=bool(loc.get("on_disk"))),
                hnsw_config=models.HnswConfigDiff(
                    m=int(loc.get("hnsw_m", 16)), ef_construct=int(loc.get("hnsw_ef_construct",
                                                                           200)),
                    on_disk=bool(loc.get("on_disk"))))
        self._metric = metric
        if self._local is not None:
            _relax_sync(self._local, self._name)

    # ------------------------------------------------------------------------ the contract
    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        """Insert or replace, in batches (`upsert_batch` points, fewer when vectors are wide)."""
        _, models = _qdrant()
        vectors = np.asarray(vectors, np.float32)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not len(ids):
            return
        if self._metric is None:
            self._create(int(vectors.shape[1]))
        step = max(1, min(int(self._location.get("upsert_batch", 10_000)),
                          _MAX_FLOATS // max(1, vectors.shape[1])))
        for s in range(0, len(ids), step):
            chunk_ids = [str(i) for i in ids[s:s + step]]
            chunk = vectors[s:s + step]
            payloads = [_clean(m) for m in metadatas[s:s + step]] if metadatas else \
                [{} for _ in chunk_ids]
            if self._metric == "cosine":
                # Qdrant keeps cosine vectors at unit length: normalise them here, in float64,
                # and keep each length so get_vectors gives back what was put in
                norms = np.linalg.norm(chunk.astype(np.float64), axis=1)
                chunk = (chunk / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
                for p, n in zip(payloads, norms.tolist(), strict=True):
                    p[_NORM_KEY] = n
            for p, i in zip(payloads, chunk_ids, strict=True):
                p[_ID_KEY] = i
            batch = models.Batch(ids=[point_id(i) for i in chunk_ids], vectors=chunk.tolist(),
                                 payloads=payloads)
            with self._asking():
                self._client.upsert(self._name, points=batch, wait=True)

    def _distance(self, score: float) -> float:
        if self._metric == "l2":
            return float(score) ** 2  # Qdrant's euclid score is the distance, not its square
        return 1.0 - float(score)  # cosine and ip: similarities

    def query(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query vector, the k nearest (object id, distance), nearest first."""
        vectors = np.asarray(vectors, np.float32)
        if self._metric is None:
            return [[] for _ in vectors]
        _, models = _qdrant()
        # embedded mode searches exactly and warns at search params; a server takes hnsw_ef
        params = None if self._local else models.SearchParams(
            hnsw_ef=max(int(self._location.get("hnsw_ef", 128)), k))
        out: list[list[tuple[str, float]]] = []
        for s in range(0, len(vectors), _QUERY_CHUNK):
            requests = [models.QueryRequest(query=v.tolist(), limit=int(k), params=params,
                                            with_payload=[_ID_KEY], with_vector=False)
                        for v in vectors[s:s + _QUERY_CHUNK]]
            with self._asking():
                answers = self._client.query_batch_points(self._name, requests=requests)
            out.extend([(p.payload[_ID_KEY], self._distance(p.score)) for p in a.points]
                       for a in answers)
        return out

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of `ids`, in the order given; KeyError names missing ids."""
        ids = [str(i) for i in ids]
        found: dict[str, np.ndarray] = {}
        if self._metric is not None:
            for s in range(0, len(ids), _READ_CHUNK):
                chunk = ids[s:s + _READ_CHUNK]
                with self._asking():
                    points = self._client.retrieve(self._name, ids=[point_id(i) for i in chunk],
                                                   with_payload=list(_RESERVED),
                                                   with_vectors=True)
                for p in points:
                    v = np.asarray(p.vector, np.float64)
                    if _NORM_KEY in p.payload:
                        v = v * p.payload[_NORM_KEY]
                    found[p.payload[_ID_KEY]] = v.astype(np.float32)
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"ids not in the index: {', '.join(missing[:10])}")
        return np.stack([found[i] for i in ids]) if ids else np.empty((0, 0), np.float32)

    def count(self) -> int:
        """Points in the collection (0 before the first upsert)."""
        if self._metric is None:
            return 0
        with self._asking():
            return int(self._client.count(self._name, exact=True).count)

    def location(self) -> dict[str, Any]:
        """Where the collection lives and how to search it: JSON-safe, no API key."""
        return {"backend": "qdrant", **{k: v for k, v in self._location.items()
                                        if k != "backend"}}
