"""`ingest`: a directory of the user's FITS cutouts plus a catalog, as a hyrax dataset.

Every catalog row ends up either in the dataset or in the manifest's failures, with a reason:
missing_file, unreadable, wrong_shape or nan_pixels. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hyrax_mlops.config import IngestConfig
from hyrax_mlops.data.catalogs import read_catalog
from hyrax_mlops.data.dataset import DatasetWriter
from hyrax_mlops.data.fits_cutouts import read_cutout

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz")
_SHAPE_PROBE = 50  # files read to find the most common shape when `shape` is not given


def fingerprint(cutouts_dir: Path, catalog: Path) -> str:
    """Changes when any cutout file or the catalog changes (names, sizes, mtimes)."""
    h = hashlib.sha256(Path(catalog).read_bytes())
    for p in sorted(Path(cutouts_dir).rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(cutouts_dir)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _file_for(row: dict[str, Any], file_column: str) -> str:
    name = row.get(file_column)
    if isinstance(name, bytes):
        name = name.decode()
    if isinstance(name, str) and name.strip():
        return name.strip()
    return f"{row['object_id']}.fits"


def _expected_shape(cfg: IngestConfig, paths: list[Path]) -> tuple[int, int, int]:
    if cfg.shape:
        return tuple(cfg.shape)
    shapes: Counter = Counter()
    for p in paths:
        if len(shapes) and sum(shapes.values()) >= _SHAPE_PROBE:
            break
        try:
            shapes[read_cutout(p, cfg.bands).shape] += 1
        except Exception:
            continue
    if not shapes:
        return (0, 0, 0)  # nothing readable: every row fails below, with its reason
    return shapes.most_common(1)[0][0]


def ingest_directory(cfg: IngestConfig, cutouts_dir: Path, catalog_path: Path,
                     out_dir: Path) -> dict[str, Any]:
    """Read every catalog row's cutout; write good stamps and record each failure."""
    catalog = read_catalog(catalog_path)
    rows = catalog.to_dict("records")
    files = [_file_for(r, cfg.file_column) for r in rows]
    paths = [cutouts_dir / f for f in files]
    shape = _expected_shape(cfg, [p for p in paths if p.is_file()])
    bands = list(cfg.bands) or [f"band{i}" for i in range(shape[0])]
    writer = DatasetWriter(out_dir, shape, bands, cfg.shard_size)
    nan_zeroed = 0
    for row, file, path in tqdm(list(zip(rows, files, paths, strict=True)), desc="ingest",
                                unit="obj"):
        oid = row["object_id"]
        if not path.is_file():
            writer.fail(oid, "missing_file", f"{path} does not exist", file)
            continue
        try:
            cube = read_cutout(path, cfg.bands)
        except Exception as exc:  # any failure to read one file is recorded, not fatal
            writer.fail(oid, "unreadable", f"{type(exc).__name__}: {exc}"[:500], file)
            continue
        if cube.shape != shape:
            writer.fail(oid, "wrong_shape", f"shape {list(cube.shape)}, expected {list(shape)}",
                        file)
            continue
        bad = ~np.isfinite(cube)
        if bad.any():
            if cfg.nan_policy == "reject":
                writer.fail(oid, "nan_pixels", f"{int(bad.sum())} non-finite pixels", file)
                continue
            cube = np.where(bad, 0.0, cube).astype(np.float32)
            nan_zeroed += 1
        writer.add(row, cube)

    referenced = {Path(f).name for f in files}
    unreferenced = sorted(
        p.name for p in cutouts_dir.iterdir()
        if p.name.lower().endswith(FITS_SUFFIXES) and p.name not in referenced
    )
    source = {
        "name": "ingest", "cutouts_dir": str(cutouts_dir), "catalog": str(catalog_path),
        "nan_policy": cfg.nan_policy, "nan_zeroed_objects": nan_zeroed,
        "unreferenced_files": len(unreferenced), "unreferenced_examples": unreferenced[:100],
    }
    return _with_series(cfg, catalog, catalog_path, writer,
                        writer.close(source, requested=len(rows)))


def ingest_catalog(cfg: IngestConfig, catalog_path: Path, out_dir: Path) -> dict[str, Any]:
    """A dataset without cutouts: every catalog row, with its light curve and spectrum files
    when the catalog names them."""
    catalog = read_catalog(catalog_path)
    writer = DatasetWriter(out_dir, (), [], 1)
    for row in catalog.to_dict("records"):
        writer.add(row)
    manifest = writer.close({"name": "ingest", "catalog": str(catalog_path)},
                            requested=len(catalog))
    return _with_series(cfg, catalog, catalog_path, writer, manifest)


def _with_series(cfg: IngestConfig, catalog, catalog_path: Path, writer: DatasetWriter,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the light curves and spectra of the objects the writer kept."""
    from hyrax_mlops.data.series import ingest_series

    kept = {str(row["object_id"]) for row in writer.rows}
    return ingest_series(catalog, kept, Path(catalog_path).parent, cfg.lightcurve_column,
                         cfg.spectrum_column, writer.out, manifest)
