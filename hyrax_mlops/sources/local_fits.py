"""`ingest`: a directory of the user's FITS cutouts plus a catalog, as a hyrax dataset.

Every catalog row ends up either in the dataset or in the manifest's failures, with a reason:
missing_file, unreadable, wrong_shape, nan_pixels or outside_folder (a file the catalog names
that is not inside `cutouts_dir`: `..`, an absolute path elsewhere, `~`, a symlink out of it;
such a file is never opened). Nothing is dropped silently.

Stamps with a celestial WCS give their centre's ICRS ra/dec when the catalog has none, are
compared with the catalog's ra/dec when it has them (a disagreement is reported, the catalog's
value kept), and keep their WCS in `dataset/wcs.parquet`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hyrax_mlops.config import IngestConfig
from hyrax_mlops.data.catalogs import (
    NotAFile,
    OutsideFolder,
    catalog_folder,
    read_catalog,
    resolve_inside,
)
from hyrax_mlops.data.dataset import DatasetWriter
from hyrax_mlops.data.fits_cutouts import (
    pixel_scale_arcsec,
    read_cutout,
    read_stamp,
    to_icrs,
    wcs_centre,
    wcs_header_text,
)
from hyrax_mlops.progress import tqdm

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz")
_SHAPE_PROBE = 50  # files read to find the most common shape when `shape` is not given
WCS_TOLERANCE_ARCSEC = 1.0  # catalog vs WCS centre: more than max(this, 2 pixels) is reported
WCS_TOLERANCE_PIXELS = 2.0
_LISTED = 1000  # disagreements listed in the manifest (all are counted)


def fingerprint(cutouts_dir: Path, catalog: Path | str) -> str:
    """Changes when any cutout file or the catalog changes (names, sizes, mtimes). Walks only
    inside `cutouts_dir`: a symlink counts by its own entry and target text, never followed."""
    from hyrax_mlops.data.catalogs import catalog_digest

    h = hashlib.sha256(catalog_digest(catalog).encode())
    root = Path(cutouts_dir)
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        here = Path(folder)
        names = sorted(files + [d for d in dirs if (here / d).is_symlink()])
        for name in names:
            p = here / name
            st = os.lstat(p)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}|{link}".encode())
    return h.hexdigest()[:16]


def _file_for(row: dict[str, Any], file_column: str) -> str:
    name = row.get(file_column)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if isinstance(name, str) and name.strip():
        return name.strip()
    return f"{row['object_id']}.fits"


def locate(folder: Path, name: str) -> tuple[Path | None, tuple[str, str] | None]:
    """(the file inside `folder`, None) or (None, (reason, detail)) with reason missing_file
    or outside_folder; nothing outside `folder` is opened or stat'ed."""
    try:
        return resolve_inside(folder, name), None
    except OutsideFolder as exc:
        return None, ("outside_folder", f"{exc}: files must be inside {folder}")
    except (FileNotFoundError, NotAFile) as exc:
        return None, ("missing_file", str(exc))
    except OSError as exc:
        return None, ("missing_file", f"'{name}' cannot be reached ({exc.strerror})")


def _expected_shape(cfg: IngestConfig, paths: list[Path]) -> tuple[int, int, int]:
    if cfg.shape:
        return tuple(cfg.shape)
    shapes: Counter = Counter()
    for p in paths:
        if len(shapes) and sum(shapes.values()) >= _SHAPE_PROBE:
            break
        try:
            shapes[read_cutout(p, cfg.bands).shape] += 1
        except Exception:  # only a vote on the shape: the row's own read records why it failed
            continue
    if not shapes:
        return (0, 0, 0)  # nothing readable: every row fails below, with its reason
    return shapes.most_common(1)[0][0]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def ingest_directory(cfg: IngestConfig, cutouts_dir: Path, catalog_path: Path,
                     out_dir: Path, catalog: pd.DataFrame | None = None) -> dict[str, Any]:
    """Read every catalog row's cutout; write good stamps and record each failure."""
    if catalog is None:
        catalog = read_catalog(catalog_path)
    rows = catalog.to_dict("records")
    files = [_file_for(r, cfg.file_column) for r in rows]
    located = [locate(cutouts_dir, f) for f in files]
    shape = _expected_shape(cfg, [p for p, _ in located if p is not None])
    bands = list(cfg.bands) or [f"band{i}" for i in range(shape[0])]
    writer = DatasetWriter(out_dir, shape, bands, cfg.shard_size)
    has_radec = {"ra", "dec"} <= set(catalog.columns)
    nan_zeroed = without_wcs = 0
    native: dict[str, tuple[float, float, str]] = {}  # centres in each WCS's own frame
    frames: dict[str, Any] = {}
    scales: dict[str, float] = {}
    for row, file, (path, failure) in tqdm(list(zip(rows, files, located, strict=True)),
                                           desc="ingest", unit="obj"):
        oid = row["object_id"]
        if failure is not None:
            writer.fail(oid, *failure, file)
            continue
        try:
            cube, wcs = read_stamp(path, cfg.bands)
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
        centre = wcs_centre(wcs, cube.shape) if wcs is not None else None
        if centre is None:
            without_wcs += 1
        else:
            key = repr(centre[2])
            frames.setdefault(key, centre[2])
            native[oid] = (centre[0], centre[1], key)
            scales[oid] = pixel_scale_arcsec(wcs)
            writer.add_wcs(oid, wcs_header_text(wcs))
        writer.add(row, cube)

    centres = _icrs_centres(native, frames)
    compare, from_wcs = [], 0
    for row in writer.rows:  # positions: the catalog's when it has them, else the WCS centre
        oid = row["object_id"]
        ra, dec = ((_number(row["ra"]), _number(row["dec"])) if has_radec
                   else (np.nan, np.nan))
        if oid not in centres:
            if not has_radec and centres:
                row["ra"], row["dec"] = np.nan, np.nan
            continue
        if np.isfinite(ra) and np.isfinite(dec):
            tol = max(WCS_TOLERANCE_ARCSEC, WCS_TOLERANCE_PIXELS * scales[oid])
            compare.append((oid, ra, dec, *centres[oid], tol))
        else:
            row["ra"], row["dec"] = centres[oid]
            from_wcs += 1
    disagreements = _disagreements(compare)
    referenced = {Path(f).name for f in files} | {p.name for p, _ in located if p is not None}
    unreferenced = sorted(
        p.name for p in cutouts_dir.iterdir()
        if p.name.lower().endswith(FITS_SUFFIXES) and p.name not in referenced
    )
    source = {
        "name": "ingest", "cutouts_dir": str(cutouts_dir), "catalog": str(catalog_path),
        "nan_policy": cfg.nan_policy, "nan_zeroed_objects": nan_zeroed,
        "unreferenced_files": len(unreferenced), "unreferenced_examples": unreferenced[:100],
        "wcs": bool(centres), "radec": "catalog" if has_radec else
        ("wcs" if centres else "none"),
    }
    counts = {"without_wcs": without_wcs, "radec_from_wcs": from_wcs,
              "wcs_disagreements": len(disagreements)}
    manifest = writer.close(source, requested=len(rows), counts=counts,
                            extra={"wcs_disagreements": disagreements[:_LISTED]})
    if disagreements:
        shown = ", ".join(f"{d['object_id']} ({d['sep_arcsec']:.2f}\")"
                          for d in disagreements[:5])
        print(f"[hyrax] ingest: {len(disagreements)} object(s) whose catalog ra/dec is farther "
              f"from their stamp's WCS centre than max({WCS_TOLERANCE_ARCSEC:g}\", "
              f"{WCS_TOLERANCE_PIXELS:g} px): {shown}; the catalog's values are kept, listed in "
              "dataset/manifest.json (wcs_disagreements)", file=sys.stderr, flush=True)
    return _with_series(cfg, catalog, catalog_path, writer, manifest,
                        {str(row["object_id"]) for row in writer.rows})


def _icrs_centres(native: dict[str, tuple[float, float, str]], frames: dict[str, Any]
                  ) -> dict[str, tuple[float, float]]:
    """ICRS (ra, dec) of each object's WCS centre, converted frame by frame in one go."""
    out: dict[str, tuple[float, float]] = {}
    for key, frame in frames.items():
        oids = [o for o, c in native.items() if c[2] == key]
        ra, dec = to_icrs([native[o][0] for o in oids], [native[o][1] for o in oids], frame)
        out.update({o: (float(r), float(d)) for o, r, d in zip(oids, ra, dec, strict=True)})
    return out


def _disagreements(compare: list[tuple[str, float, float, float, float, float]]
                   ) -> list[dict[str, Any]]:
    """Objects whose catalog (ra, dec) is farther than the tolerance from the WCS centre,
    largest first."""
    if not compare:
        return []
    from astropy.coordinates import angular_separation

    oid, ra, dec, wra, wdec, tol = (list(c) for c in zip(*compare, strict=True))
    sep = np.degrees(angular_separation(*(np.radians(np.asarray(v, float))
                                          for v in (ra, dec, wra, wdec)))) * 3600.0
    out = [{"object_id": o, "sep_arcsec": round(float(s), 3), "tolerance_arcsec":
            round(float(t), 3)} for o, s, t in zip(oid, sep, tol, strict=True) if s > t]
    return sorted(out, key=lambda d: -d["sep_arcsec"])


def ingest_catalog(cfg: IngestConfig, catalog_path: Path, out_dir: Path,
                   catalog: pd.DataFrame | None = None) -> dict[str, Any]:
    """A dataset without cutouts: every catalog row, with its light curve and spectrum files
    when the catalog names them."""
    if catalog is None:
        catalog = read_catalog(catalog_path)
    writer = DatasetWriter(out_dir, (), [], 1)
    writer.add_catalog(catalog)
    manifest = writer.close({"name": "ingest", "catalog": str(catalog_path)},
                            requested=len(catalog))
    return _with_series(cfg, catalog, catalog_path, writer, manifest, None)  # every row kept


def _with_series(cfg: IngestConfig, catalog, catalog_path: Path, writer: DatasetWriter,
                 manifest: dict[str, Any], kept: set[str] | None) -> dict[str, Any]:
    """Add the light curves and spectra of the objects the writer kept (None: all)."""
    from hyrax_mlops.data.series import ingest_series

    return ingest_series(catalog, kept, catalog_folder(catalog_path), cfg.lightcurve_column,
                         cfg.spectrum_column, writer.out, manifest)
