"""Read a user's catalog (CSV, Parquet or FITS table) into a DataFrame keyed by object_id."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hyrax_mlops.errors import DataError

_READERS = {
    ".csv": pd.read_csv, ".gz": pd.read_csv, ".parquet": pd.read_parquet,
    ".pq": pd.read_parquet,
}


def read_table(path: Path) -> pd.DataFrame:
    """Any CSV, Parquet or FITS table (e.g. a reference catalog to crossmatch with)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".fits", ".fit", ".fts"} or path.name.lower().endswith(".fits.gz"):
        return _read_fits_table(path)
    if suffix in _READERS:
        return _READERS[suffix](path)
    raise DataError(f"catalog '{path}' is not .csv, .parquet or .fits: cannot read it.")


def read_catalog(path: Path) -> pd.DataFrame:
    """The catalog with `object_id` as strings; duplicates and a missing column are errors."""
    path = Path(path)
    df = read_table(path)
    if "object_id" not in df.columns:
        cols = ", ".join(map(str, df.columns))
        raise DataError(f"catalog '{path}' has no 'object_id' column (columns: {cols}). "
                        "Fix: rename your id column to object_id.")
    df["object_id"] = df["object_id"].astype(str).str.strip()
    dup = df["object_id"][df["object_id"].duplicated()].unique()
    if len(dup):
        raise DataError(f"catalog '{path}' repeats object_id values: {', '.join(dup[:10])}")
    return df.reset_index(drop=True)


def _read_fits_table(path: Path) -> pd.DataFrame:
    from astropy.table import Table

    table = Table.read(path)
    scalar = [name for name in table.colnames if table[name].ndim <= 1]
    df = table[scalar].to_pandas()
    for col in df.columns:  # FITS strings may arrive as bytes
        if df[col].dtype == object and len(df) and isinstance(df[col].iloc[0], bytes):
            df[col] = df[col].str.decode("utf-8").str.strip()
    return df
