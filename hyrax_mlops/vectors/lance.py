"""LanceDB: a table on local disk or object storage (`index.url = "s3://bucket/prefix"`) with
an IVF index, for collections larger than one machine's RAM (partitions are read as probed).

Below `index.ivf_min_rows` rows the table is searched exhaustively (exact, and fast at that
size); above it an IVF index is trained: IVF-Flat by default (exact distances inside the
`nprobes` partitions searched), or IVF-PQ (`index.index_type = "ivf_pq"`, a sixteenth of the
disk), whose queries re-rank `refine_factor * k` candidates with the full vectors (at least
50 of them) so recall stays high. Requires the `lancedb` extra.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from hyrax_mlops.config import ComponentConfig, IndexConfig
from hyrax_mlops.errors import ConfigError, HyraxError
from hyrax_mlops.quiet import quiet_lancedb
from hyrax_mlops.redact import redact
from hyrax_mlops.vectors import VECTOR_BACKENDS
from hyrax_mlops.vectors.base import CollectionNotFound, VectorIndex, unreachable

_METRICS = {"cosine": "cosine", "l2": "l2", "ip": "dot"}
_RESERVED = ("id", "vector")
_CHUNK = 100_000
_QUERY_BATCH = 256  # query vectors per LanceDB call (a batch of 10 costs ~2.5 single queries)
# Re-rank at least this many PQ candidates with the full vectors, whatever k: with k = 1 and
# refine_factor 10, ten candidates missed the exact nearest neighbour about 1 query in 100.
# With dim/4 sub-vectors 50 candidates hold the 10 nearest (0.9945 at 1M x 64) at the latency
# 100 had with dim/8 (0.977): each candidate's full vector is read to re-rank it.
_MIN_CANDIDATES = 50
_FIX = ("check that index.url / index.path is reachable and that the object store's "
        "credentials (its usual environment variables) are valid.")


def _connect(uri: str, settings: dict[str, Any]):
    """A connection to `uri` and the LanceDB caches it uses (the index's async connection
    shares them): the index cache bounded to `index_cache_gb` when set, else LanceDB's
    default (6 GB)."""
    quiet_lancedb()
    try:
        import lancedb
    except ImportError:
        raise ConfigError("index.backend 'lancedb' needs the lancedb package: "
                          "pip install 'hyrax-mlops[lancedb]'") from None
    gb = settings.get("index_cache_gb") or 0  # locations recorded before it have none
    session = (lancedb.Session(index_cache_size_bytes=int(gb * 2**30)) if gb
               else lancedb.Session())
    return lancedb.connect(uri, session=session), session


def _loop_running() -> bool:
    """Whether this thread is inside a running asyncio event loop (a notebook cell is)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conform(data, schema):
    """`data` in the table's schema: columns in its order, missing ones null, types cast
    (a chunk whose metadata column is all missing arrives typed null)."""
    import pyarrow as pa

    columns = [data.column(f.name) if f.name in data.column_names
               else pa.nulls(len(data), f.type) for f in schema]
    extra = [c for c in data.column_names if c not in schema.names]
    if extra:
        raise ValueError(f"metadata columns {extra} are not in the index's table "
                         f"(it has {schema.names}); re-create the index to add them")
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema, strict=True)],
                                schema=schema)


class LanceConfig(ComponentConfig):
    """The IVF index's keys in `[index]` when `backend = "lancedb"`."""

    # ivf_flat: at 1M x 64 recall@10 0.9995-1.0 at p50 2.3-2.9 ms, built in 12 s, the index as
    # big as the vectors; ivf_pq (dim/4, 50 re-ranked): 0.995 at 5.1-5.9 ms, built in 38 s,
    # the index a sixteenth of that, for vectors that would not fit twice on disk
    index_type: Literal["ivf_flat", "ivf_pq"] = "ivf_flat"
    ivf_min_rows: int = Field(50_000, ge=1)  # exact search below this many rows
    ivf_partitions: int = Field(0, ge=0)  # 0 = sqrt(rows)
    # 0 = dim/4: at 1M x 64, 100 re-ranked candidates found 0.977 of the 10 nearest with dim/8
    # sub-vectors, 0.9945 with dim/4 from only 50 (build 38 s instead of 14 s)
    pq_sub_vectors: int = Field(0, ge=0)  # ivf_pq only
    # partitions searched per query: IVF-Flat at 1M x 64 found 0.9995 of the 10 nearest with
    # 5 of 1,000 and all of them with 10; IVF-PQ's recall did not move from 5 to 40
    nprobes: int = Field(10, ge=1)
    refine_factor: int = Field(5, ge=1)  # ivf_pq: re-rank refine_factor*k (>= 50) candidates
    # searched partitions stay in memory, up to this much (0 = LanceDB's default, 6 GB): an
    # IVF-Flat partition holds full vectors, so a long-lived app over 10M x 256 fills it
    index_cache_gb: float = Field(0.0, ge=0)


@VECTOR_BACKENDS.register("lancedb")
class LanceIndex(VectorIndex):
    config_class = LanceConfig
    capabilities = {"max_k": None, "metadata": True, "metrics": tuple(_METRICS)}

    def __init__(self, db, session, name: str, location: dict[str, Any],
                 settings: dict[str, Any]) -> None:
        self._db, self._name, self._location, self._settings = db, name, location, settings
        self._session = session  # the caches this index's connections share
        self._table = db.open_table(name) if name in self._tables() else None
        self._loop: asyncio.AbstractEventLoop | None = None  # this index's, for queries
        self._reader = None  # the table opened through the async API, on the first query
        self._reader_lock = threading.Lock()
        # asked once per opening, not per query (list_indices costs as much as a search):
        # the vector index's type ("IvfFlat", "IvfPq", ...), None while searched exhaustively
        self._vector_index = self._built_index_type()

    def _built_index_type(self) -> str | None:
        indices = self._table.list_indices() if self._table is not None else []
        return str(indices[0].index_type) if indices else None

    def _tables(self) -> list[str]:
        listed = self._db.list_tables()
        return list(getattr(listed, "tables", listed))

    @classmethod
    def identity(cls, cfg: IndexConfig) -> dict[str, Any]:
        # nprobes and refine_factor are not here: they are passed with every query, from the
        # location each run records, so runs differing only in them share one table.
        table = {"metric": cfg.metric, "ivf_min_rows": cfg.ivf_min_rows,
                 "ivf_partitions": cfg.ivf_partitions}
        if cfg.index_type == "ivf_flat":
            return {**table, "index_type": "ivf_flat"}
        # IVF-PQ's identity is the one it had before IVF-Flat existed: its tables keep names
        auto = {"pq_auto": "dim/4"} if not cfg.pq_sub_vectors else {}  # (dim/8 before)
        return {**table, "pq_sub_vectors": cfg.pq_sub_vectors, **auto}

    @classmethod
    def _opened(cls, uri: str, name: str, location: dict[str, Any],
                settings: dict[str, Any]) -> LanceIndex:
        try:
            return cls(*_connect(uri, settings), name=name, location=location,
                       settings=settings)
        except HyraxError:
            raise
        except Exception as exc:
            raise unreachable("lancedb", uri, exc, _FIX) from None

    @classmethod
    def open(cls, cfg: IndexConfig, name: str, *, create: bool) -> LanceIndex:
        uri = cfg.url or str(Path(cfg.path or ".hyrax/lancedb").expanduser().resolve())
        # every key LanceConfig declares: what a reopened index must query and cache with
        settings = {"metric": cfg.metric,
                    **{key: getattr(cfg, key) for key in LanceConfig.model_fields}}
        index = cls._opened(uri, name, {"uri": uri, **settings}, settings)
        if not create and index._table is None:
            raise CollectionNotFound(f"no LanceDB table '{name}' at {redact(uri)}")
        return index

    @classmethod
    def reopen(cls, location: dict[str, Any], name: str) -> LanceIndex:
        settings = {k: v for k, v in location.items() if k not in ("uri", "backend")}
        index = cls._opened(location["uri"], name, location, settings)
        if index._table is None:
            raise CollectionNotFound(f"no LanceDB table '{name}' at {redact(location['uri'])}")
        return index

    @classmethod
    def exists(cls, location: dict[str, Any], name: str) -> int | None:
        uri = location.get("uri", "")
        if "://" not in uri and not Path(uri).is_dir():
            return None
        return super().exists(location, name)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        """Add or update rows, 100k at a time (Arrow copies stay one chunk in size). A new
        table is written in one commit after its first chunk: ten million rows make about ten
        files of a million, not a hundred files and versions that every query must open."""
        if not len(ids):
            return
        chunks = (self._arrow(ids[s:s + _CHUNK], vectors[s:s + _CHUNK],
                              metadatas[s:s + _CHUNK] if metadatas else None)
                  for s in range(0, len(ids), _CHUNK))
        self._drop_reader()  # the query side reopens at the new version
        if self._table is None:  # its ids need no matching against old rows
            import pyarrow as pa

            self._table = self._db.create_table(self._name, data=next(chunks))
            if len(ids) > _CHUNK:
                schema = self._table.schema
                self._table.add(pa.RecordBatchReader.from_batches(
                    schema, (b for c in chunks for b in _conform(c, schema).to_batches())))
        else:
            for data in chunks:
                (self._table.merge_insert("id").when_matched_update_all()
                 .when_not_matched_insert_all().execute(_conform(data, self._table.schema)))
        self._maybe_build_index()

    @staticmethod
    def _arrow(ids: Sequence[str], vectors: np.ndarray,
               metadatas: Sequence[dict[str, Any]] | None):
        import pyarrow as pa

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        columns = {"id": pa.array([str(i) for i in ids], pa.string()),
                   "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()),
                                                               vectors.shape[1])}
        if metadatas:
            keys = [k for k in dict.fromkeys(k for m in metadatas for k in m)
                    if k not in _RESERVED]
            for k in keys:
                values = [m.get(k) for m in metadatas]
                values = [None if isinstance(v, float) and math.isnan(v) else
                          v.item() if isinstance(v, np.generic) else v for v in values]
                try:
                    columns[k] = pa.array(values)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    columns[k] = pa.array([None if v is None else str(v) for v in values])
        return pa.table(columns)

    def _maybe_build_index(self) -> None:
        """Train the IVF index once the table is big enough, and again when a tenth of the
        rows is unindexed."""
        s, rows = self._settings, self._table.count_rows()
        if rows < s["ivf_min_rows"]:
            return
        indices = self._table.list_indices()
        if indices:
            stats = self._table.index_stats(indices[0].name)
            if stats is not None and stats.num_unindexed_rows <= rows // 10:
                return
        from lancedb.index import IvfFlat, IvfPq

        common = {"distance_type": _METRICS[s["metric"]],
                  "num_partitions": s["ivf_partitions"] or max(1, int(math.sqrt(rows)))}
        if s.get("index_type", "ivf_pq") == "ivf_flat":  # older locations name no type
            config = IvfFlat(**common)
        else:
            dim = self._table.schema.field("vector").type.list_size
            sub = s["pq_sub_vectors"] or next(dim // d for d in (4, 2, 1) if dim % d == 0)
            config = IvfPq(num_sub_vectors=sub, **common)
        self._table.create_index("vector", replace=True, config=config)
        self._vector_index = self._built_index_type()

    def query(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """k nearest of each vector, through LanceDB's async API on an event loop of this
        index's own, up to 256 vectors per call: the sync API hands every query to a
        background loop's thread and back, which was a third of a query's time at 1M x 64
        (8.1 ms -> 5.2 ms). Inside a running event loop (a notebook cell), where another
        loop cannot run, through the sync API."""
        if self._table is None:
            return [[] for _ in vectors]
        vectors = np.asarray(vectors, np.float32)
        batches = [vectors[s:s + _QUERY_BATCH] for s in range(0, len(vectors), _QUERY_BATCH)]
        if _loop_running():
            results = [self._search(self._table.search(self._one_or_many(b),
                                                       vector_column_name="vector"), k)
                       .to_arrow() for b in batches]
        else:
            with self._reader_lock:  # one loop: queries from several threads take turns
                loop, table = self._open_reader()

                async def all_of():
                    return await asyncio.gather(*(
                        self._search(table.query().nearest_to(self._one_or_many(b))
                                     .column("vector"), k).to_arrow() for b in batches))

                results = loop.run_until_complete(all_of())
        found: list[list[tuple[str, float]]] = []
        for batch, r in zip(batches, results, strict=True):
            if len(batch) == 1:  # one vector: no query_index column
                found.append(self._pairs(r))
                continue
            r = r.sort_by([("query_index", "ascending"), ("_distance", "ascending")])
            starts = np.searchsorted(r.column("query_index").to_numpy(),
                                     np.arange(len(batch) + 1))
            found.extend(self._pairs(r.slice(a, b - a))
                         for a, b in zip(starts[:-1], starts[1:], strict=True))
        return found

    @staticmethod
    def _one_or_many(batch: np.ndarray):
        """A query vector as LanceDB takes one (a 1-d array), or a list of them."""
        return batch[0] if len(batch) == 1 else list(batch)

    @staticmethod
    def _pairs(r) -> list[tuple[str, float]]:
        return list(zip(r.column("id").to_pylist(),
                        map(float, r.column("_distance").to_pylist()), strict=True))

    def _search(self, q, k: int):
        """A vector query (sync or async builder) with this index's metric and settings: IVF
        queries probe `nprobes` partitions, and IVF-PQ's re-rank their candidates."""
        s = self._settings
        q = q.distance_type(_METRICS[s["metric"]]).limit(k).select(["id", "_distance"])
        if not self._vector_index:
            return q
        q = q.nprobes(s["nprobes"])
        if self._vector_index != "IvfFlat":  # exact distances already
            q = q.refine_factor(max(s["refine_factor"], math.ceil(_MIN_CANDIDATES / max(k, 1))))
        return q

    def _open_reader(self):
        """This index's event loop and its table opened through the async API (again after
        an upsert, so queries see the new rows)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            weakref.finalize(self, self._loop.close)
        if self._reader is None:
            import lancedb

            db = self._loop.run_until_complete(lancedb.connect_async(self._location["uri"],
                                                                     session=self._session))
            self._reader = self._loop.run_until_complete(db.open_table(self._name))
        return self._loop, self._reader

    def _drop_reader(self) -> None:
        with self._reader_lock:
            self._reader = None

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        ids = [str(i) for i in ids]
        found: dict[str, np.ndarray] = {}
        if self._table is not None and ids:
            for i in range(0, len(ids), 1000):
                chunk = ids[i:i + 1000]
                res = (self._table.search().where(f"id IN ({', '.join(map(_quote, chunk))})")
                       .select(["id", "vector"]).limit(len(chunk)).to_arrow())
                vecs = res.column("vector").combine_chunks()
                flat = vecs.flatten().to_numpy(zero_copy_only=False)
                for j, key in enumerate(res.column("id").to_pylist()):
                    found[key] = flat[j * vecs.type.list_size:(j + 1) * vecs.type.list_size]
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"ids not in the index: {', '.join(missing[:10])}")
        return np.stack([found[i] for i in ids]).astype(np.float32)

    def count(self) -> int:
        return 0 if self._table is None else self._table.count_rows()

    def location(self) -> dict[str, Any]:
        return {"backend": "lancedb", **self._location}
