"""Streaming: train on survey cutouts without downloading them all first (`data.mode="stream"`).

The download run then logs the catalog and what to fetch (source, bands, layers, stamp
size) instead of shards; the DataProvider asks the source for each batch's cutouts through
the same engine (parallel requests, retries, validation) and keeps them in an on-disk cache
capped at `data.stream_cache_gb`, evicting the least recently used, so later epochs read
locally. Batches are prepared ahead of the training loop in a background thread.
A cutout that cannot be fetched is never fatal and never trained on as zeros: `fetch` says
which rows have every band, the DataProvider leaves the others out of the batch, and the
objects that failed are counted (`failed_objects`; the train run's `stream_failed_objects`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from hyrax_mlops.config import DataConfig, DownloadConfig
from hyrax_mlops.downloader.journal import Journal
from hyrax_mlops.downloader.staging import CutoutStore, item_key
from hyrax_mlops.sources.survey import (
    DownloadContext,
    Target,
    channel_names,
    read_targets,
    survey_source,
)


def write_stream_dataset(cfg: DownloadConfig, catalog: Path, out_dir: Path) -> dict[str, Any]:
    """A dataset whose pixels come from the source on demand: catalog + manifest, no shards."""
    from hyrax_mlops.data.dataset import DatasetWriter

    source = survey_source(cfg)
    targets, rows, bad = read_targets(catalog, cfg.limit)
    shape = (len(source.bands) * len(cfg.layers), cfg.stamp_size, cfg.stamp_size)
    writer = DatasetWriter(out_dir, shape, channel_names(source.bands, cfg.layers),
                           cfg.shard_size)
    by_id = {t.object_id: t for t in targets}
    writer.rows.extend(dict(r, ra=by_id[str(r["object_id"])].ra, dec=by_id[str(r["object_id"])].dec)
                       for r in rows if str(r["object_id"]) in by_id)  # no pixels: rows only
    for oid, detail in bad.items():
        writer.fail(oid, "bad_position", detail)
    return writer.close({"name": source.name, "catalog": str(catalog), "mode": "stream"},
                        requested=len(rows),
                        extra={"stream": {"download": cfg.model_dump(mode="json"),
                                          "bands": source.bands}})


class LRUCutoutStore(CutoutStore):
    """A CutoutStore that keeps at most `max_bytes` on disk, dropping the least recently used
    stamps first. Safe for the engine's worker threads."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        super().__init__(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[Path, int] = OrderedDict()
        self.bytes = 0
        self.evicted = 0
        found = sorted(self.root.rglob("*.npy"), key=lambda p: p.stat().st_mtime) \
            if self.root.is_dir() else []
        for path in found:  # what earlier runs left, oldest first
            self._sizes[path] = path.stat().st_size
            self.bytes += self._sizes[path]
        self._evict()

    def put(self, object_id: str, band: str, stamp: np.ndarray) -> None:
        super().put(object_id, band, stamp)
        path = self.path(object_id, band)
        with self._lock:
            self.bytes -= self._sizes.pop(path, 0)
            self._sizes[path] = path.stat().st_size
            self.bytes += self._sizes[path]
            self._evict()

    def get(self, object_id: str, band: str) -> np.ndarray:
        path = self.path(object_id, band)
        with self._lock:
            if path in self._sizes:
                self._sizes.move_to_end(path)
        return super().get(object_id, band)

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and len(self._sizes) > 1:
            path, size = self._sizes.popitem(last=False)
            self.bytes -= size
            self.evicted += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class CutoutStream:
    """Pixels of a streamed dataset: `images(rows)` fetches what the cache lacks, then reads."""

    def __init__(self, manifest: dict[str, Any], catalog, data: DataConfig) -> None:
        spec = manifest["stream"]
        self.cfg = DownloadConfig.model_validate(spec["download"])
        self.source = survey_source(self.cfg)
        self.bands = list(spec["bands"])
        self.shape = tuple(manifest["shape"])
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        self.root = Path(data.stream_cache_dir).expanduser().resolve() / key
        self.store = LRUCutoutStore(self.root / "cutouts", int(data.stream_cache_gb * 2**30))
        self.targets = [Target(str(o), float(r), float(d)) for o, r, d in
                        zip(catalog["object_id"], catalog["ra"], catalog["dec"], strict=True)]
        self.failed: dict[str, dict] = {}  # item key (object, band) -> the journal's record
        self._failed_objects: dict[str, str] = {}  # object_id -> reason, once seen in a batch
        self.unread = 0  # rows left out because the cache dropped a stamp before it was read
        self._lock = threading.Lock()  # one batch fetch at a time; each is parallel inside

    @property
    def failed_objects(self) -> dict[str, str]:
        """Objects with a cutout that could not be fetched: object_id -> reason."""
        with self._lock:
            return dict(self._failed_objects)

    def images(self, rows) -> np.ndarray:
        """Stamps of `rows`; a row whose cutout failed is all zeros (see `fetch`)."""
        return self.fetch(rows)[0]

    def fetch(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(stamps, ok): the stamps of `rows`, and which rows have every band. A row that is not
        ok (a failed cutout, or one a tiny cache dropped before it was read) holds zeros and
        must be left out by the caller."""
        targets = [self.targets[int(r)] for r in rows]
        with self._lock:
            missing = [(t, b) for t in targets for b in self.bands
                       if item_key(t.object_id, b) not in self.failed
                       and not self.store.has(t.object_id, b)]
            if missing:
                with Journal(None) as journal:
                    ctx = DownloadContext(self.root, show_progress=False)
                    self.source.fetch(missing, self.store, journal, ctx)
                    self.failed.update(journal.failed)
            out = np.zeros((len(targets), *self.shape), np.float32)
            ok = np.ones(len(targets), dtype=bool)
            per_band = self.shape[0] // len(self.bands)
            for i, t in enumerate(targets):
                for j, band in enumerate(self.bands):
                    key = item_key(t.object_id, band)
                    if key in self.failed:
                        ok[i] = False
                        self._failed_objects.setdefault(t.object_id, _reason(self.failed[key]))
                        break
                    try:
                        out[i, j * per_band:(j + 1) * per_band] = self.store.get(t.object_id,
                                                                                 band)
                    except FileNotFoundError:  # evicted meanwhile by a tiny cache
                        ok[i] = False
                        self.unread += 1
                        break
        out[~ok] = 0.0
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out, ok


def _reason(detail) -> str:
    if isinstance(detail, dict):
        return str(detail.get("reason") or detail.get("error") or "failed")
    return str(detail or "failed")
