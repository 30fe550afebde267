"""LanceDB: a table on local disk or object storage (`index.url = "s3://bucket/prefix"`) with
an IVF index, for collections larger than one machine's RAM (partitions are read as probed).

Below `index.ivf_min_rows` rows the table is searched exhaustively (exact, and fast at that
size); above it an IVF index is trained: IVF-Flat by default (exact distances inside the
`nprobes` partitions searched), or IVF-PQ (`index.index_type = "ivf_pq"`, a sixteenth of the
disk), whose queries re-rank `refine_factor * k` candidates with the full vectors (at least
50 of them) so recall stays high. Requires the `lancedb` extra.

The table is written and indexed through LanceDB and queried through its Lance dataset
(`pylance`): one blocking call into Lance per batch of queries, instead of LanceDB's async API
waking Python's event loop several times per query (1.0 ms against 2.2 ms a query at
1M x 64, warm). A local table also keeps its ids beside it in row-id order
(`NAME.ids/v{VERSION}.arrow`, written after each upsert): a query asks Lance only for row ids
and distances and finds the ids in that memory-mapped file, instead of Lance reading each
neighbour's id back from the table (10 random reads, 0.4-0.7 ms). A table changed by
anything else has no file for its new version and is queried the usual way.
"""

from __future__ import annotations

import math
import os
import threading
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


def _cache_bytes(settings: dict[str, Any]) -> int | None:
    """The index cache bound `index_cache_gb` in bytes; None: Lance's default (6 GB).
    Locations recorded before the key existed have none."""
    gb = settings.get("index_cache_gb") or 0
    return int(gb * 2**30) if gb else None


def _connect(uri: str, settings: dict[str, Any]):
    """A connection to `uri` (the writing side), its index cache bounded like the query
    side's."""
    quiet_lancedb()
    try:
        import lance  # noqa: F401  (the query side)
        import lancedb
    except ImportError as exc:
        package = {"lance": "pylance"}.get(exc.name, "lancedb")
        raise ConfigError(f"index.backend 'lancedb' needs the {package} package: "
                          "pip install 'hyrax-mlops[lancedb]'") from None
    bound = _cache_bytes(settings)
    session = lancedb.Session(index_cache_size_bytes=bound) if bound else lancedb.Session()
    return lancedb.connect(uri, session=session)


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

    def __init__(self, db, name: str, location: dict[str, Any],
                 settings: dict[str, Any]) -> None:
        self._db, self._name, self._location, self._settings = db, name, location, settings
        self._table = db.open_table(name) if name in self._tables() else None
        self._reader = None  # the table's Lance dataset, for queries, opened on the first
        self._ids: _IdFile | None = None  # the reader's version's ids in row-id order
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
            return cls(_connect(uri, settings), name=name, location=location,
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
        folder = self._ids_folder()
        if folder is not None:
            _IdFile.write(folder, self._table.to_lance())

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
        """k nearest of each vector, up to 256 vectors per call into Lance (a batch of 10
        costs about 2.5 single queries). Safe from several threads and inside a running event
        loop (a notebook cell): Lance's calls block, releasing the GIL."""
        if self._table is None:
            return [[] for _ in vectors]
        vectors = np.asarray(vectors, np.float32)
        dataset, ids = self._open_reader()
        found: list[list[tuple[str, float]]] = []
        for s in range(0, len(vectors), _QUERY_BATCH):
            batch = vectors[s:s + _QUERY_BATCH]
            r = dataset.to_table(columns=["id", "_distance"] if ids is None else ["_distance"],
                                 with_row_id=ids is not None,
                                 nearest=self._nearest(self._one_or_many(batch), k))
            if ids is not None:
                r = r.append_column("id", ids.lookup(r.column("_rowid")))
            if len(batch) == 1:  # one vector: no query_index column
                found.append(self._pairs(r.sort_by("_distance")))
                continue
            r = r.sort_by([("query_index", "ascending"), ("_distance", "ascending")])
            starts = np.searchsorted(r.column("query_index").to_numpy(),
                                     np.arange(len(batch) + 1))
            found.extend(self._pairs(r.slice(a, b - a))
                         for a, b in zip(starts[:-1], starts[1:], strict=True))
        return found

    @staticmethod
    def _one_or_many(batch: np.ndarray) -> np.ndarray:
        """A query vector as Lance takes one (a 1-d array), or several (a 2-d array)."""
        return batch[0] if len(batch) == 1 else batch

    @staticmethod
    def _pairs(r) -> list[tuple[str, float]]:
        return list(zip(r.column("id").to_pylist(),
                        map(float, r.column("_distance").to_pylist()), strict=True))

    def _nearest(self, q: np.ndarray, k: int) -> dict[str, Any]:
        """Lance's vector query for `q` with this index's metric and settings: IVF queries
        probe `nprobes` partitions, and IVF-PQ's re-rank their candidates."""
        s = self._settings
        nearest = {"column": "vector", "q": q, "k": k, "metric": _METRICS[s["metric"]]}
        if not self._vector_index:
            return nearest
        nearest["nprobes"] = s["nprobes"]
        if self._vector_index != "IvfFlat":  # exact distances already
            nearest["refine_factor"] = max(s["refine_factor"],
                                           math.ceil(_MIN_CANDIDATES / max(k, 1)))
        return nearest

    def prewarm(self) -> None:
        """Read the vector index's partitions into the query side's index cache: a partition
        is otherwise read and decoded the first time a query probes it, which at 1M x 64 made
        the first few hundred queries of a process ~2x slower (p50 2.5 ms, 1.2 ms after this,
        which took 0.05-0.5 s). Skipped when the index would not fit in the cache
        (`index_cache_gb`, else Lance's 6 GB): it would only evict itself."""
        if self._table is None or not self._vector_index:
            return
        if self._index_bytes() > (_cache_bytes(self._settings) or 6 * 2**30):
            return
        dataset, _ = self._open_reader()
        dataset.prewarm_index(self._table.list_indices()[0].name)

    def _index_bytes(self) -> int:
        """About what the vector index holds in memory: each row's vector (IVF-Flat) or code
        (IVF-PQ), and its row id."""
        dim = self._table.schema.field("vector").type.list_size
        per_row = 4 * dim if self._vector_index == "IvfFlat" else (
            self._settings.get("pq_sub_vectors") or dim // 4)
        return self._table.count_rows() * (per_row + 8)

    def _ids_folder(self) -> Path | None:
        uri = self._location["uri"]
        return None if "://" in uri else Path(uri) / f"{self._name}.ids"

    def _open_reader(self):
        """The table's Lance dataset for queries, at its version when first asked (again
        after an upsert, so queries see the new rows), with that version's ids. Its index
        cache is bounded like the connection's."""
        with self._reader_lock:
            if self._reader is None:
                bound = _cache_bytes(self._settings)
                self._reader = self._table.to_lance(
                    **({"index_cache_size_bytes": bound} if bound else {}))
                folder = self._ids_folder()
                self._ids = None if folder is None else _IdFile.open(folder, self._reader)
            return self._reader, self._ids

    def _drop_reader(self) -> None:
        with self._reader_lock:
            self._reader, self._ids = None, None

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


class _IdFile:
    """A table version's ids in row-id order, in an Arrow file beside the table that queries
    memory-map: Lance returns a neighbour's row id without reading anything more, the id is
    then found with a binary search (30 us; Lance reading the 10 ids back from the table was
    0.4-0.7 ms at 1M x 64). The file is ~20 bytes a row."""

    def __init__(self, row_ids: np.ndarray, ids) -> None:
        self.row_ids, self.ids = row_ids, ids

    @staticmethod
    def write(folder: Path, dataset) -> None:
        """The ids of a Lance `dataset`'s version, replacing the files of older versions
        (written under a temporary name, then renamed: a reader never sees half a file). A
        table made again under its name starts at version 1: its first file replaces none of
        the old table's, which its readers ignore (`open`) and its later files remove."""
        import pyarrow as pa

        version = dataset.version
        rows = dataset.to_table(columns=["id"], with_row_id=True)
        row_ids = rows.column("_rowid").to_numpy()
        ids = rows.column("id").cast(pa.large_string()).combine_chunks()  # one batch
        if len(row_ids) > 1 and not (np.diff(row_ids.astype(np.int64)) > 0).all():
            order = np.argsort(row_ids, kind="stable")
            row_ids, ids = row_ids[order], ids.take(pa.array(order))
        out = pa.table({"row_id": pa.array(row_ids, pa.uint64()), "id": ids},
                       metadata={"hyrax.files": _data_files(dataset)})
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".v{version}.{os.getpid()}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, out.schema) as writer:
            writer.write_table(out)
        os.replace(tmp, folder / f"v{version}.arrow")
        for old in folder.glob("v*.arrow"):  # older versions' (another writer's newer stays)
            if old.stem[1:].isdigit() and int(old.stem[1:]) < version:
                old.unlink(missing_ok=True)  # a reader that mapped it keeps its pages

    @classmethod
    def open(cls, folder: Path, dataset) -> _IdFile | None:
        """The file of the Lance `dataset`'s version, memory-mapped; None when there is none
        (the table was written by something else, or before these files existed) or when it
        was written for another table that had the same version number (a table dropped and
        made again under the same name starts counting its versions again)."""
        import pyarrow as pa

        path = folder / f"v{dataset.version}.arrow"
        try:
            data = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except (FileNotFoundError, pa.ArrowInvalid):
            return None
        written_for = (data.schema.metadata or {}).get(b"hyrax.files", b"").decode()
        if written_for != _data_files(dataset) or (
                data.num_rows and data.column("id").num_chunks != 1):
            return None
        return cls(data.column("row_id").to_numpy(), data.column("id").chunk(0)
                   if data.num_rows else data.column("id").combine_chunks())

    def lookup(self, row_ids):
        """The ids of `row_ids` (an Arrow or numpy array) as an Arrow array."""
        import pyarrow as pa

        wanted = np.asarray(row_ids, np.uint64)
        at = np.searchsorted(self.row_ids, wanted)
        if len(wanted) and (at.max() >= len(self.row_ids) or
                            (self.row_ids[at] != wanted).any()):
            raise HyraxError("the index's id file does not match its table. Fix: re-run "
                             "`hyrax-mlops index --force` to rebuild it.")
        return self.ids.take(pa.array(at))


def _data_files(dataset) -> str:
    """A digest of the data files a Lance dataset's version is made of: files get unique
    random names, so two tables (or two lives of one table name) never share it."""
    import hashlib

    names = sorted(f"{fragment.fragment_id}:{file.path}" for fragment in dataset.get_fragments()
                   for file in fragment.data_files())
    return hashlib.sha256("\n".join(names).encode()).hexdigest()
