"""Crossmatch the dataset's objects with a reference catalog by sky position.

- `nearest`: each object takes its nearest reference source within the radius (astropy
  `match_to_catalog_sky`); several objects may share one reference source.
- `greedy`: one-to-one. Every pair within the radius gets a score, (separation / radius)^2,
  plus, when both catalogs have a magnitude, (magnitude difference / its scatter)^2. With a
  reference magnitude, reference sources are taken brightest first, each matching its
  best-scoring object still free; without one, the best-scoring pair is taken first. This is
  the approach of LSST's probabilistic matcher (`lsst.meas.astrom.MatcherProbabilistic`).

Unmatched objects get ref_index -1 and a NaN separation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from hyrax_mlops.analysis.analyses import ANALYSES, AnalysisContext, AnalysisResult
from hyrax_mlops.config import ComponentConfig
from hyrax_mlops.errors import ConfigError, DataError

CROSSMATCH_TABLE = "analysis/crossmatch.parquet"
ID_COLUMNS = ("object_id", "id", "name")  # the first a reference has becomes ref_id
_NAN_MAG_TERM = 1.0  # a pair with a missing magnitude scores as a one-sigma difference


def _coords(ra, dec):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(np.asarray(ra, float) * u.deg, np.asarray(dec, float) * u.deg)


def _finite(ra, dec) -> np.ndarray:
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    return np.isfinite(ra) & np.isfinite(dec)


def match_nearest(ra, dec, ref_ra, ref_dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """(reference row per object or -1, separation in arcsec or NaN)."""
    index = np.full(len(ra), -1, dtype=np.int64)
    sep = np.full(len(ra), np.nan)
    ok, ref_ok = _finite(ra, dec), np.flatnonzero(_finite(ref_ra, ref_dec))
    if not ok.any() or not len(ref_ok):
        return index, sep
    ref = _coords(np.asarray(ref_ra, float)[ref_ok], np.asarray(ref_dec, float)[ref_ok])
    idx, d2d, _ = _coords(np.asarray(ra, float)[ok], np.asarray(dec, float)[ok]) \
        .match_to_catalog_sky(ref)
    d = d2d.arcsec
    near = d <= radius_arcsec
    rows = np.flatnonzero(ok)
    index[rows[near]] = ref_ok[idx[near]]
    sep[rows[near]] = d[near]
    return index, sep


def candidate_pairs(ra, dec, ref_ra, ref_dec, radius_arcsec: float):
    """Every (object row, reference row, separation arcsec) closer than the radius."""
    import astropy.units as u

    ok, ref_ok = np.flatnonzero(_finite(ra, dec)), np.flatnonzero(_finite(ref_ra, ref_dec))
    if not len(ok) or not len(ref_ok):
        return np.array([], int), np.array([], int), np.array([])
    obj = _coords(np.asarray(ra, float)[ok], np.asarray(dec, float)[ok])
    ref = _coords(np.asarray(ref_ra, float)[ref_ok], np.asarray(ref_dec, float)[ref_ok])
    i_ref, i_obj, d2d, _ = obj.search_around_sky(ref, radius_arcsec * u.arcsec)
    return ok[i_obj], ref_ok[i_ref], d2d.arcsec


def magnitude_term(mag: np.ndarray, ref_mag: np.ndarray) -> np.ndarray:
    """((dmag - median dmag) / robust scatter)^2 per pair: zero points need not agree."""
    dmag = np.asarray(mag, float) - np.asarray(ref_mag, float)
    good = np.isfinite(dmag)
    term = np.full(len(dmag), _NAN_MAG_TERM)
    if good.sum() < 2:
        return term
    centre = np.median(dmag[good])
    scale = max(1.4826 * np.median(np.abs(dmag[good] - centre)), 0.05)
    term[good] = ((dmag[good] - centre) / scale) ** 2
    return term


def match_greedy(ra, dec, ref_ra, ref_dec, radius_arcsec: float, mag=None,
                 ref_mag=None) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching, brightest reference first: (reference row or -1, separation)."""
    index = np.full(len(ra), -1, dtype=np.int64)
    sep = np.full(len(ra), np.nan)
    obj, ref, d = candidate_pairs(ra, dec, ref_ra, ref_dec, radius_arcsec)
    score = (d / radius_arcsec) ** 2
    if mag is not None and ref_mag is not None:
        score = score + magnitude_term(np.asarray(mag, float)[obj],
                                       np.asarray(ref_mag, float)[ref])
    if ref_mag is not None:  # brightest reference first (missing magnitudes last)
        bright = np.nan_to_num(np.asarray(ref_mag, float), nan=np.inf)[ref]
        order = np.lexsort((d, score, bright))
    else:  # the best pair first
        order = np.lexsort((d, score))
    ref_taken = np.zeros(len(ref_ra), dtype=bool)
    for p in order:
        i, j = obj[p], ref[p]
        if index[i] < 0 and not ref_taken[j]:
            index[i], sep[i], ref_taken[j] = j, d[p], True
    return index, sep


def read_reference(path: str | Path, ra: str, dec: str, label: str = "",
                   mag: str = "") -> pd.DataFrame:
    """The reference table, with every column the config names checked (errors name the key)."""
    from hyrax_mlops.data.catalogs import read_table

    table = read_table(Path(path).expanduser())
    if table.empty:
        raise DataError(f"the reference catalog '{path}' has no rows.")
    for key, col in (("reference_ra", ra), ("reference_dec", dec), ("reference_label", label),
                     ("reference_mag", mag)):
        if col and col not in table.columns:
            import difflib

            close = difflib.get_close_matches(col, list(map(str, table.columns)), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key 'analyse.{key}' = '{col}' is not a column of the "
                              f"reference catalog '{path}'.{hint} (columns: "
                              f"{', '.join(map(str, table.columns))})")
    return table


def crossmatch_table(ids: np.ndarray, catalog: pd.DataFrame, reference: pd.DataFrame,
                     cfg) -> pd.DataFrame:
    """object_id, matched, ref_index, ref_id, separation_arcsec (+ ref_label)."""
    for col in ("ra", "dec"):
        if col not in catalog:
            raise DataError(f"the dataset's catalog has no '{col}' column: nothing to "
                            "crossmatch by. Fix: ingest a catalog with ra and dec (degrees).")
    ref_ra, ref_dec = reference[cfg.reference_ra], reference[cfg.reference_dec]
    if cfg.match_method == "greedy":
        mag = catalog[cfg.catalog_mag] if cfg.catalog_mag else None
        ref_mag = reference[cfg.reference_mag] if cfg.reference_mag else None
        index, sep = match_greedy(catalog["ra"], catalog["dec"], ref_ra, ref_dec,
                                  cfg.match_radius_arcsec, mag, ref_mag)
    else:
        index, sep = match_nearest(catalog["ra"], catalog["dec"], ref_ra, ref_dec,
                                   cfg.match_radius_arcsec)
    matched = index >= 0
    id_col = next((c for c in reference.columns if str(c).lower() in ID_COLUMNS), None)
    ref_ids = reference[id_col].astype(str).to_numpy() if id_col else \
        reference.index.astype(str).to_numpy()
    table = pd.DataFrame({"object_id": ids, "matched": matched, "ref_index": index,
                          "ref_id": np.where(matched, ref_ids[np.maximum(index, 0)], None),
                          "separation_arcsec": sep})
    if cfg.reference_label:
        labels = reference[cfg.reference_label].to_numpy(dtype=object)
        table["ref_label"] = np.where(matched, labels[np.maximum(index, 0)], None)
    return table


class CrossmatchConfig(ComponentConfig):
    """`[analyse]` keys of "crossmatch": the reference catalog and how to match it."""

    reference: str = ""
    reference_ra: str = Field("ra", min_length=1)
    reference_dec: str = Field("dec", min_length=1)
    match_radius_arcsec: float = Field(1.0, gt=0)
    match_method: Literal["nearest", "greedy"] = "nearest"
    reference_label: str = ""
    reference_mag: str = ""
    catalog_mag: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> CrossmatchConfig:
        if self.catalog_mag and not self.reference_mag:
            raise ValueError("analyse.catalog_mag is compared with the reference's magnitude: "
                             "set analyse.reference_mag too")
        return self


@ANALYSES.register("crossmatch")
def crossmatch(ctx: AnalysisContext) -> AnalysisResult:
    cfg = ctx.cfg
    if cfg.catalog_mag and cfg.catalog_mag not in ctx.catalog:
        raise ConfigError(f"config key 'analyse.catalog_mag' = '{cfg.catalog_mag}' is not a "
                          "catalog column")
    reference = ctx.reference
    if reference is None:
        reference = read_reference(cfg.reference, cfg.reference_ra, cfg.reference_dec,
                                   cfg.reference_label, cfg.reference_mag)
    table = crossmatch_table(ctx.ids, ctx.catalog, reference, cfg)
    n = int(table["matched"].sum())
    metrics = {"crossmatch.n_matched": n, "crossmatch.match_fraction": n / max(len(table), 1),
               "crossmatch.n_reference": len(reference)}
    if n:
        metrics["crossmatch.median_separation_arcsec"] = float(
            table["separation_arcsec"].median())
    columns = {"ref_matched": table["matched"].to_numpy(),
               "ref_id": table["ref_id"].to_numpy(),
               "ref_separation_arcsec": table["separation_arcsec"].to_numpy()}
    if "ref_label" in table:
        columns["ref_label"] = table["ref_label"].to_numpy()
    notes = [] if _finite(ctx.catalog["ra"], ctx.catalog["dec"]).any() else \
        ["crossmatch: no object has ra/dec, so nothing was matched"]
    return AnalysisResult(tables={CROSSMATCH_TABLE: table}, metrics=metrics, columns=columns,
                          notes=notes)


crossmatch.config_class = CrossmatchConfig
