"""Light curves and spectra: read from users' files into the dataset format, and turned into
fixed-size tensors with masks for models.

In a dataset they are long tables next to the catalog:
    dataset/lightcurves.parquet  object_id, time (d), band, mag, mag_err
    dataset/spectra.parquet      object_id, wave (Å), flux, err, good
Fluxes with a zero point become magnitudes; spectra keep their own units and are scaled per
object when tensors are made, so any survey's files mix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LIGHTCURVES, SPECTRA = "lightcurves.parquet", "spectra.parquet"
LIGHTCURVE_FORMAT = ("a CSV or Parquet table with columns time, band, and mag (+ mag_err) or "
                     "flux, flux_err, zp")
SPECTRUM_FORMAT = ("a FITS table in HDU 1 with WAVE, FLUX (+ ERR, MASK), or a CSV with wave, "
                   "flux (+ err, mask)")


class SeriesFormatError(ValueError):
    """A light curve or spectrum file that is readable but not in the expected form; its
    message says what is expected and never repeats the file's contents."""


def _numeric(df: pd.DataFrame, column: str, kind: str) -> np.ndarray:
    try:
        return np.asarray(df[column], dtype=float)
    except (TypeError, ValueError):
        raise SeriesFormatError(f"the {kind}'s column {column} is not numeric") from None


def read_lightcurve(path: Path) -> pd.DataFrame:
    """A CSV/Parquet light curve: `time`, `band`, and `mag`+`mag_err`, or `flux`+`flux_err`
    (+ `zp`, converted to magnitudes). Non-finite rows are dropped."""
    return lightcurve_table(pd.read_parquet(path) if path.suffix == ".parquet"
                            else pd.read_csv(path))


def lightcurve_table(df: pd.DataFrame) -> pd.DataFrame:
    """A light curve's table (time, band, mag, mag_err) from its columns, as read from a
    file or sent in a request: `mag`+`mag_err`, or `flux`+`flux_err`+`zp` (magnitudes)."""
    columns = set(map(str, df.columns))
    if not {"time", "band"} <= columns:
        raise SeriesFormatError(f"a light curve needs columns time and band; expected "
                                f"{LIGHTCURVE_FORMAT}")
    time = _numeric(df, "time", "light curve")
    if "mag" in columns:
        mag = _numeric(df, "mag", "light curve")
        mag_err = (_numeric(df, "mag_err", "light curve") if "mag_err" in columns
                   else np.full(len(df), np.nan))
    elif {"flux", "flux_err", "zp"} <= columns:
        flux, flux_err, zp = (_numeric(df, c, "light curve") for c in ("flux", "flux_err", "zp"))
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = np.where(flux > 0, zp - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
            mag_err = 1.0857 * flux_err / flux
    else:
        raise SeriesFormatError(f"a light curve needs mag/mag_err, or flux/flux_err/zp; "
                                f"expected {LIGHTCURVE_FORMAT}")
    out = pd.DataFrame({"time": time, "band": df["band"].astype(str).to_numpy(),
                        "mag": mag, "mag_err": mag_err})
    return out[np.isfinite(out["time"]) & np.isfinite(out["mag"])].sort_values("time")


def read_spectrum(path: Path) -> pd.DataFrame:
    """A FITS (first table HDU with WAVE/FLUX[/ERR][/MASK]) or CSV (`wave`, `flux`[, `err`])
    spectrum. `good` is False where the flux is not finite or the mask flags the pixel."""
    if path.suffix.lower() in (".fits", ".fit", ".fts") or path.name.endswith(".fits.gz"):
        from astropy.table import Table

        t = Table.read(path, hdu=1)
        cols = {c.lower(): c for c in t.colnames}
        if not {"wave", "flux"} <= set(cols):
            raise SeriesFormatError(f"a spectrum needs WAVE and FLUX columns; expected "
                                    f"{SPECTRUM_FORMAT}")
        df = pd.DataFrame({k: np.asarray(t[c]).astype(t[c].dtype.newbyteorder("="))
                           for k, c in cols.items()
                           if k in ("wave", "flux", "err", "mask") and t[c].ndim == 1})
    else:
        df = pd.read_csv(path)
    return spectrum_table(df)


def spectrum_table(df: pd.DataFrame) -> pd.DataFrame:
    """A spectrum's table (wave, flux, err, good) from its columns (wave, flux[, err][, mask],
    any case), as read from a file or sent in a request."""
    df = df.rename(columns=lambda c: str(c).lower())
    if not {"wave", "flux"} <= set(df.columns):
        raise SeriesFormatError(f"a spectrum needs wave and flux columns; expected "
                                f"{SPECTRUM_FORMAT}")
    wave, flux = _numeric(df, "wave", "spectrum"), _numeric(df, "flux", "spectrum")
    err = _numeric(df, "err", "spectrum") if "err" in df else np.full_like(flux, np.nan)
    mask = _numeric(df, "mask", "spectrum") if "mask" in df else np.zeros(len(flux))
    good = np.isfinite(wave) & np.isfinite(flux) & (mask == 0)
    out = pd.DataFrame({"wave": wave, "flux": flux, "err": err, "good": good})
    return out[np.isfinite(out["wave"])].sort_values("wave")


def lightcurve_tensors(table: pd.DataFrame, ids: np.ndarray, bands: list[str],
                       max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, max_points, 3 + len(bands)), mask (n, max_points)) for `ids` in order.

    Per point: days since the object's first point / 100, magnitude minus the object's
    median, its error, and the band one-hot. More points than `max_points` are thinned evenly
    (the first and last kept); an object without a light curve is all mask 0.
    """
    width = 3 + len(bands)
    out = np.zeros((len(ids), max_points, width), np.float32)
    mask = np.zeros((len(ids), max_points), np.float32)
    band_index = {b: i for i, b in enumerate(bands)}
    groups = dict(tuple(table.groupby("object_id", sort=False))) if len(table) else {}
    for i, oid in enumerate(ids):
        lc = groups.get(oid)
        if lc is None or not len(lc):
            continue
        if len(lc) > max_points:
            lc = lc.iloc[np.linspace(0, len(lc) - 1, max_points).round().astype(int)]
        t, m = lc["time"].to_numpy(float), lc["mag"].to_numpy(float)
        e = np.nan_to_num(lc["mag_err"].to_numpy(float), nan=0.0)
        k = len(lc)
        out[i, :k, 0] = (t - t[0]) / 100.0
        out[i, :k, 1] = m - np.median(m)
        out[i, :k, 2] = np.clip(e, 0, 5)
        for j, b in enumerate(lc["band"].to_numpy()):
            if b in band_index:
                out[i, j, 3 + band_index[b]] = 1.0
        mask[i, :k] = 1.0
    return out, mask


def spectrum_tensors(table: pd.DataFrame, ids: np.ndarray, grid: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(flux (n, 2, len(grid)) — flux and error divided by the object's median |flux| —,
    mask (n, len(grid))): each spectrum resampled onto `grid` (Å); pixels outside its coverage
    or flagged bad are masked."""
    out = np.zeros((len(ids), 2, len(grid)), np.float32)
    mask = np.zeros((len(ids), len(grid)), np.float32)
    groups = dict(tuple(table.groupby("object_id", sort=False))) if len(table) else {}
    for i, oid in enumerate(ids):
        sp = groups.get(oid)
        if sp is None:
            continue
        sp = sp[sp["good"]]
        if len(sp) < 2:
            continue
        w, f = sp["wave"].to_numpy(float), sp["flux"].to_numpy(float)
        e = np.nan_to_num(sp["err"].to_numpy(float), nan=0.0)
        scale = np.median(np.abs(f)) or 1.0
        inside = (grid >= w[0]) & (grid <= w[-1])
        out[i, 0, inside] = np.interp(grid[inside], w, f) / scale
        out[i, 1, inside] = np.interp(grid[inside], w, e) / scale
        mask[i, inside] = 1.0
    return np.clip(out, -50, 50), mask


def ingest_series(catalog: pd.DataFrame, kept: set[str] | None, base_dir: Path,
                  lightcurve_column: str, spectrum_column: str, out_dir: Path,
                  manifest: dict) -> dict:
    """Read each kept object's (`kept` None: every catalog row's) light curve and spectrum
    files (catalog columns, paths relative to `base_dir`, the catalog's folder) into the
    dataset's long tables. A file that is missing, unreadable or outside `base_dir` (never
    opened) is a recorded failure of that modality, not of the object. Updates and returns
    `manifest`."""
    import json
    from collections import Counter

    from hyrax_mlops.data.catalogs import NotAFile, OutsideFolder, resolve_inside

    modalities = [manifest.get("modality", "image")] if manifest.get("shape") else []
    for column, reader, name, kind, expected in (
            (lightcurve_column, read_lightcurve, LIGHTCURVES, "lightcurve", LIGHTCURVE_FORMAT),
            (spectrum_column, read_spectrum, SPECTRA, "spectrum", SPECTRUM_FORMAT)):
        if not column or column not in catalog.columns:
            continue
        parts = []
        for oid, file in zip(catalog["object_id"].astype(str), catalog[column], strict=True):
            if ((kept is not None and oid not in kept) or not isinstance(file, str)
                    or not file.strip()):
                continue

            def fail(reason: str, detail: str, oid: str = oid, file: str = file,
                     kind: str = kind) -> None:
                manifest["failures"].append({"object_id": oid, "file": file, "reason": reason,
                                             "detail": detail[:500], "modality": kind})
            try:
                path = resolve_inside(base_dir, file)
            except OutsideFolder as exc:
                fail("outside_folder", f"{exc}: {kind} files must be inside the catalog's "
                     f"folder {base_dir}")
                continue
            except (FileNotFoundError, NotAFile) as exc:
                fail(f"missing_{kind}", str(exc))
                continue
            except OSError as exc:
                fail(f"missing_{kind}", f"'{file.strip()}' cannot be reached ({exc.strerror})")
                continue
            try:
                part = reader(path)
            except SeriesFormatError as exc:
                fail(f"unreadable_{kind}", str(exc))
                continue
            except Exception as exc:  # one unreadable file is recorded, not fatal
                fail(f"unreadable_{kind}", f"{type(exc).__name__}: not readable as a {kind}; "
                     f"expected {expected}")
                continue
            parts.append(part.assign(object_id=oid))
        if parts:
            pd.concat(parts, ignore_index=True).to_parquet(out_dir / name, index=False)
            modalities.append(kind)
            manifest.setdefault("counts", {})[f"with_{kind}"] = len(parts)
    manifest["modalities"] = modalities or ["tabular"]
    manifest["counts"]["modality_failures"] = sum(
        1 for f in manifest["failures"]
        if "modality" in f or f["reason"].endswith(("lightcurve", "spectrum")))
    manifest["counts"]["failed_by_reason"] = dict(Counter(f["reason"]
                                                          for f in manifest["failures"]))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def series_fingerprint(catalog_path: Path | str, lightcurve_column: str, spectrum_column: str,
                       catalog: pd.DataFrame | None = None) -> str:
    """The catalog's bytes and the size and mtime of every light curve / spectrum file it
    names inside its folder (nothing outside it is stat'ed): a changed file makes a new
    dataset instead of reusing the old run."""
    import hashlib

    from hyrax_mlops.data.catalogs import (
        catalog_digest,
        catalog_folder,
        read_catalog,
        resolve_inside,
    )

    h = hashlib.sha256(catalog_digest(catalog_path).encode())
    if catalog is None:
        catalog = read_catalog(catalog_path)
    base = catalog_folder(catalog_path)
    for column in (lightcurve_column, spectrum_column):
        if column and column in catalog.columns:
            for file in catalog[column]:
                if not isinstance(file, str) or not file.strip():
                    continue
                try:
                    st = resolve_inside(base, file).stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                except (OSError, ValueError):  # missing, outside the folder, not a file
                    size = mtime = -1
                h.update(f"{file}|{size}|{mtime}".encode())
    return h.hexdigest()
