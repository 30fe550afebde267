"""Catalog columns the config names, checked before any run exists.

A dataset's columns are known before it is made: the user's catalog (ingest, survey
downloads) or the demo source's measurements. So a `data.label_column` typo fails when the
pipeline starts, not after ingest and half an hour of training.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from hyrax_mlops.config import Config, require_path
from hyrax_mlops.data.catalogs import catalog_location
from hyrax_mlops.errors import ConfigError

# Added by ingest from each stamp's WCS when the catalog has no positions.
_FROM_WCS = ("ra", "dec")


def table_columns(path: Path | str) -> list[str] | None:
    """Column names of a CSV, Parquet or FITS table (or a HATS catalog), read from its header
    (metadata) only; None when it cannot be read that way (the stage's own check says why)."""
    from hyrax_mlops.data import hats

    name = Path(path).name.lower()
    try:
        if hats.is_hats(path):
            return hats.column_names(hats.parse(path))
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
            from astropy.io import fits

            with fits.open(path, memmap=False) as hdul:
                table = next((h for h in hdul if isinstance(h, (fits.BinTableHDU,
                                                                 fits.TableHDU))), None)
                return list(table.columns.names) if table is not None else None
        if name.endswith((".csv", ".csv.gz", ".gz")):
            import pandas as pd

            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception:  # unreadable: reported by the check that reads the whole catalog
        return None
    return None


def expected_columns(cfg: Config, stage: str | None = None) -> list[str] | None:
    """The columns of the dataset this config's `stage` ("download" or "ingest"; default
    `pipeline.dataset`) will make; None when not knowable yet."""
    if (stage or cfg.pipeline.dataset) == "ingest":
        cols = table_columns(catalog_location(cfg.ingest.catalog)) if cfg.ingest.catalog \
            else None
        if cols is not None and cfg.ingest.cutouts_dir:
            cols += [c for c in _FROM_WCS if c not in cols]
        return cols
    from hyrax_mlops.sources import SOURCES

    declared = getattr(SOURCES.get(cfg.download.source), "catalog_columns", None)
    if declared:  # a source that makes its own catalog says which columns it has
        return list(declared)
    if cfg.download.catalog:
        return table_columns(catalog_location(cfg.download.catalog))
    return None


def _missing(key: str, column: str, columns: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(column, columns, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"config key '{key}' = '{column}' is not a column of {where}.{hint} "
                       f"(columns: {', '.join(columns)})")


def check_label_columns(cfg: Config, columns: Iterable[str] | None) -> None:
    """`data.label_column` is in `data.labels_file` (with object_id), else in the catalog."""
    column = cfg.data.label_column
    if cfg.data.labels_file:
        path = require_path(cfg, "data.labels_file", "file")
        found = table_columns(path)
        if found is None:
            raise ConfigError(f"config key 'data.labels_file' = '{cfg.data.labels_file}' is not "
                              "a readable CSV, Parquet or FITS table with a header.")
        if "object_id" not in found:
            raise ConfigError(f"config key 'data.labels_file': '{path.name}' has no object_id "
                              "column to join the labels on. Fix: name the id column object_id.")
        if column and column not in found:
            raise _missing("data.label_column", column, found, f"data.labels_file '{path.name}'")
    elif column and columns is not None and column not in columns:
        raise _missing("data.label_column", column, list(columns), "the catalog")


def check_columns(cfg: Config, columns: list[str] | None) -> None:
    """Every catalog column the config names, against the dataset's expected columns."""
    check_label_columns(cfg, columns)
    if columns is None:
        return
    for feature in cfg.data.features:
        col = feature.removeprefix("log10:")
        if col not in columns:
            raise _missing("data.features", col, columns, "the catalog")
    for col in cfg.index.metadata_columns:
        if col not in columns:
            raise _missing("index.metadata_columns", col, columns, "the catalog")


def color_column(requested: str, columns: Iterable[str], numeric: Iterable[str]
                 ) -> tuple[str | None, str | None]:
    """(the column to colour maps by, a note when it is not the one asked for): a missing
    `reduce.color_by` falls back to a numeric catalog column rather than failing the run."""
    columns = list(columns)
    if not requested or requested in columns:
        return requested or None, None
    skip = {"object_id", "ra", "dec", "x", "y", "file"}
    fallback = next((c for c in numeric if c not in skip), None)
    shown = f"'{fallback}'" if fallback else "nothing (one colour)"
    return fallback, (f"reduce.color_by = '{requested}' is not a catalog column: the maps are "
                      f"coloured by {shown} instead (--set reduce.color_by=COLUMN to choose)")
