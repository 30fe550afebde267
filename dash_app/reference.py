"""Reference catalogs: a user's CSV matched to a reduction by object_id or by sky position."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd


def parse_upload(contents: str) -> pd.DataFrame:
    """The DataFrame of a dcc.Upload payload ('data:...;base64,....')."""
    _, payload = contents.split(",", 1)
    return pd.read_csv(io.BytesIO(base64.b64decode(payload)))


def _objects(n: int) -> str:
    return f"{n:,} reference object{'' if n == 1 else 's'}"


def match(reference: pd.DataFrame, catalog: pd.DataFrame, radius_arcsec: float
          ) -> tuple[np.ndarray, str]:
    """Catalog rows matching the reference, and a sentence saying how they were matched."""
    n = len(reference)
    if "object_id" in reference.columns:
        ids = set(reference["object_id"].astype(str))
        rows = np.flatnonzero(catalog["object_id"].astype(str).isin(ids).to_numpy())
        return rows, f"{len(rows)} of {_objects(n)} matched by object_id"
    if {"ra", "dec"} <= set(reference.columns):
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        if not {"ra", "dec"} <= set(catalog.columns) or catalog["ra"].isna().all():
            return np.array([], dtype=np.int64), "this dataset has no ra/dec to match against"
        have = catalog["ra"].notna().to_numpy() & catalog["dec"].notna().to_numpy()
        cat_rows = np.flatnonzero(have)
        cat = SkyCoord(catalog["ra"].to_numpy()[have] * u.deg,
                       catalog["dec"].to_numpy()[have] * u.deg)
        ref = SkyCoord(reference["ra"].to_numpy(float) * u.deg,
                       reference["dec"].to_numpy(float) * u.deg)
        idx, sep, _ = ref.match_to_catalog_sky(cat)
        ok = sep.arcsec <= radius_arcsec
        rows = np.unique(cat_rows[idx[ok]])
        return rows, f"{int(ok.sum())} of {_objects(n)} within {radius_arcsec}\""
    return np.array([], dtype=np.int64), "the CSV needs an object_id column or ra and dec columns"
