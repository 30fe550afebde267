"""The on-disk dataset format shared by every source: what a download or ingest run logs.

    dataset/catalog.parquet        one row per object, in shard order (object_id first)
    dataset/shards/image-00000.npy float32 (n, bands, height, width), `shard_size` rows each
    dataset/manifest.json          counts, bands, shape, checksums, and every failure
    dataset/wcs.parquet            object_id, wcs_header (FITS header text) of each stamp that
                                   carries a celestial WCS (only when some do)

A catalog-only dataset (`modality: tabular`: shape [], no shards) serves models that read
catalog features (`data.features`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hyrax_mlops.errors import DataError

FORMAT = "hyrax-dataset/1"
ARTIFACT_DIR = "dataset"
WCS_FILE = "wcs.parquet"


def sha256_file(path: Path) -> str:
    """The file's sha256, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DatasetWriter:
    """Collects good stamps and recorded failures; writes shards as they fill."""

    def __init__(self, out_dir: Path, shape: tuple[int, int, int], bands: list[str],
                 shard_size: int) -> None:
        self.out = Path(out_dir)
        (self.out / "shards").mkdir(parents=True, exist_ok=True)  # empty when catalog-only
        self.shape = tuple(int(s) for s in shape)
        self.bands = list(bands)
        self.shard_size = shard_size
        self.rows: list[dict[str, Any]] = []
        self._frames: list[pd.DataFrame] = []  # catalog-only rows added a frame at a time
        self.failures: list[dict[str, str]] = []
        self._buffer: list[np.ndarray] = []
        self._shards: list[dict[str, Any]] = []
        self._wcs: list[tuple[str, str]] = []

    def add_wcs(self, object_id: str, header: str) -> None:
        """Keep an added stamp's WCS (as FITS header text) for `wcs.parquet`."""
        self._wcs.append((str(object_id), header))

    def add(self, row: dict[str, Any], stamp: np.ndarray | None = None) -> None:
        """One object: its catalog row and (unless catalog-only) its stamp."""
        if not self.shape:  # catalog-only
            self.rows.append(row)
            return
        if stamp is None or stamp.shape != self.shape:
            got = None if stamp is None else stamp.shape
            raise ValueError(f"stamp {got} does not match dataset shape {self.shape}")
        self.rows.append(row)
        self._buffer.append(np.asarray(stamp, dtype=np.float32))
        if len(self._buffer) == self.shard_size:
            self._flush()

    def add_catalog(self, rows: pd.DataFrame) -> None:
        """Many objects of a catalog-only dataset at once, kept as the frame they are: ten
        million catalog rows as one dict each would take ten times the memory."""
        if self.shape:
            raise ValueError("add_catalog is for catalog-only datasets: add stamps with add()")
        self._frames.append(rows)

    def fail(self, object_id: str, reason: str, detail: str = "", file: str = "") -> None:
        """Record one object that is not in the dataset, and why."""
        self.failures.append(
            {"object_id": str(object_id), "file": file, "reason": reason, "detail": detail}
        )

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"shards/image-{len(self._shards):05d}.npy"
        np.save(self.out / name, np.stack(self._buffer), allow_pickle=False)
        self._shards.append(
            {"file": name, "count": len(self._buffer), "sha256": sha256_file(self.out / name)}
        )
        self._buffer = []

    def close(self, source: dict[str, Any], requested: int,
              extra: dict[str, Any] | None = None,
              counts: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the catalog and manifest (also when nothing was usable: see `check_usable`);
        `extra` adds keys to the manifest (e.g. what a streamed dataset fetches), `counts`
        to its counts."""
        self._flush()
        parts = [*self._frames, *([pd.DataFrame(self.rows)] if self.rows else [])]
        if not parts:
            catalog = pd.DataFrame(columns=["object_id"])
        elif len(parts) == 1:
            catalog = parts[0]  # a catalog-only dataset's frame, not copied
        else:
            catalog = pd.concat(parts, ignore_index=True)
        catalog.to_parquet(self.out / "catalog.parquet", index=False)
        if self._wcs:
            pd.DataFrame(self._wcs, columns=["object_id", "wcs_header"]).to_parquet(
                self.out / WCS_FILE, index=False)
            extra = {**(extra or {}), "wcs": {"file": WCS_FILE, "rows": len(self._wcs),
                                              "sha256": sha256_file(self.out / WCS_FILE)}}
        manifest = {
            "format": FORMAT,
            "modality": "image" if self.shape else "tabular",
            "shape": list(self.shape),
            "dtype": "float32",
            "bands": self.bands,
            "shard_size": self.shard_size,
            "shards": self._shards,
            "catalog": {"file": "catalog.parquet", "columns": list(catalog.columns),
                        "sha256": sha256_file(self.out / "catalog.parquet")},
            "counts": {
                "requested": requested,
                "ingested": len(catalog),
                "failed": len(self.failures),
                "failed_by_reason": dict(Counter(f["reason"] for f in self.failures)),
                **(counts or {}),
            },
            "failures": self.failures,
            "source": source,
            **(extra or {}),
        }
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest


def check_usable(manifest: dict[str, Any]) -> None:
    """Refuse a dataset with no objects, saying why each one failed."""
    counts = manifest["counts"]
    if counts["ingested"] == 0:
        raise DataError(
            f"no usable objects: all {counts['requested']} failed "
            f"({counts['failed_by_reason']}); see dataset/manifest.json of this run."
        )


class Dataset:
    """Read side of the format: the catalog in memory, pixels memory-mapped shard by shard."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.manifest = json.loads((self.root / "manifest.json").read_text())
        except FileNotFoundError:
            raise DataError(f"'{self.root}' holds no manifest.json: not a hyrax dataset") from None
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"'{self.root}' is format {self.manifest.get('format')}, not {FORMAT}")
        self.catalog = pd.read_parquet(self.root / "catalog.parquet")
        self.shape = tuple(self.manifest["shape"])
        self.bands = list(self.manifest["bands"])
        self._shard_size = int(self.manifest["shard_size"])
        self._shards = [
            np.load(self.root / s["file"], mmap_mode="r", allow_pickle=False)
            for s in self.manifest["shards"]
        ]
        self.stream = None  # a streamed dataset's pixel source (sources.stream.CutoutStream)

    @property
    def streamed(self) -> bool:
        """Pixels fetched from the survey on demand (`data.mode = "stream"`), not in shards."""
        return "stream" in self.manifest

    def __len__(self) -> int:
        return len(self.catalog)

    @property
    def ids(self) -> np.ndarray:
        """object_id of every row, as text."""
        return self.catalog["object_id"].astype(str).to_numpy()

    def wcs_headers(self) -> pd.DataFrame:
        """object_id and wcs_header (FITS header text) of each stamp that has a celestial WCS;
        empty when none has."""
        if getattr(self, "_wcs_table", None) is None:
            path = self.root / WCS_FILE
            self._wcs_table = (pd.read_parquet(path) if "wcs" in self.manifest and path.is_file()
                               else pd.DataFrame({"object_id": pd.Series(dtype=str),
                                                  "wcs_header": pd.Series(dtype=str)}))
        return self._wcs_table

    def wcs(self, object_id: str) -> Any:
        """The `astropy.wcs.WCS` of one object's stamp, or None when it has none."""
        from astropy.io import fits
        from astropy.wcs import WCS

        table = self.wcs_headers()
        match = table.loc[table["object_id"] == str(object_id), "wcs_header"]
        if match.empty:
            return None
        return WCS(fits.Header.fromstring(match.iloc[0]))

    def run_view(self, rows: np.ndarray) -> np.ndarray | None:
        """The stamps of `rows` as a read-only view of one shard when they are a run of
        consecutive rows inside it (a single pass in order), else None: a reader that makes
        its own output from them (normalising) then skips copying them first."""
        if self.streamed or not len(rows) or not self.shape:
            return None
        first, last = int(rows[0]), int(rows[-1])
        shard = first // self._shard_size
        if last - first != len(rows) - 1 or last // self._shard_size != shard:
            return None
        if not np.array_equal(rows, np.arange(first, last + 1)):
            return None
        start = first % self._shard_size
        return self._shards[shard][start:start + len(rows)]

    def images(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """float32 (len(rows), bands, h, w), gathered across shards in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.streamed:
            if self.stream is None:
                raise DataError("this dataset is streamed: its pixels come from the survey "
                                "through a DataProvider (data.mode = \"stream\")")
            return self.stream.images(rows)
        out = np.empty((len(rows), *self.shape), dtype=np.float32)
        shard_of = rows // self._shard_size
        for shard in np.unique(shard_of):  # one read per shard touched, straight into `out`
            where = np.flatnonzero(shard_of == shard)
            local = rows[where] % self._shard_size
            data = self._shards[shard]
            if len(where) == len(rows) and np.all(np.diff(local) == 1):
                out[:] = data[local[0]:local[-1] + 1]  # a run of rows: one memcpy
            elif len(where) == len(rows):
                np.take(data, local, axis=0, out=out)
            else:
                out[where] = data[local]
        return out

    def verify(self) -> list[str]:
        """Files whose checksum differs from the manifest (empty when intact)."""
        return [s["file"] for s in self.manifest["shards"]
                if sha256_file(self.root / s["file"]) != s["sha256"]]
