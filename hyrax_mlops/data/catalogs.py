"""Read a user's catalog (CSV, Parquet or FITS table, or a HATS catalog: `data.hats`) into a
DataFrame keyed by object_id, and find the files a catalog names without ever leaving the
folder they must be in.

`object_id` is always text, exactly as written: `00042` stays `00042` and a 64-bit survey id
such as `36411448540270969` keeps every digit (integer columns become their decimal text, never
through a float). Empty, repeated or fractional ids, and catalogs that are empty, header-only
or not a table at all, are `DataError`s naming the file and the rows.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hyrax_mlops.errors import DataError

CSV_SUFFIXES = (".csv", ".csv.gz", ".gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
# pandas' default NA strings: kept for every column except object_id, where they are ids
_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
_FLOAT_EXACT = 2 ** 53  # above this a float cannot hold every integer: digits were lost
_SNIFF = 1 << 16
_SHOW = 10  # ids / rows named in one message


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return ""


def _rows(rows: list[int]) -> str:
    """1-based data row numbers, the first few."""
    shown = ", ".join(str(r + 1) for r in rows[:_SHOW])
    return shown + (f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else "")


def catalog_location(value: str | Path) -> Path | str:
    """Where a catalog key points: a file's Path (`~` expanded), or a HATS catalog's text
    (a folder or an s3:// URL, with its options; see `data.hats`)."""
    from hyrax_mlops.data import hats

    return str(value) if hats.is_hats(value) else Path(value).expanduser()


def catalog_digest(location: str | Path) -> str:
    """What identifies a catalog's content: a file's sha256, a HATS catalog's fingerprint."""
    from hyrax_mlops.data import hats

    if hats.is_hats(location):
        return hats.fingerprint(hats.parse(location))
    from hyrax_mlops.data.dataset import sha256_file

    return sha256_file(Path(location))


def catalog_stem(location: str | Path) -> str:
    """A short name for run names: the file's stem, or the HATS catalog's folder name."""
    from hyrax_mlops.data import hats

    return hats.parse(location).name if hats.is_hats(location) else Path(location).stem


def catalog_folder(location: str | Path) -> Path:
    """The folder whose files the catalog may name: the one holding the file, or holding the
    HATS catalog's folder."""
    from hyrax_mlops.data import hats

    if hats.is_hats(location):
        cat = hats.parse(location)
        if cat.remote:
            raise DataError(f"catalog '{location}' is remote: the files it names cannot be read "
                            "from a local folder. Fix: give a local copy of the catalog.")
        return Path(cat.location).parent
    return Path(location).parent


def require_catalog(value: str, key: str) -> Path | str:
    """A catalog key's value checked before any run: an existing file or a HATS catalog."""
    from hyrax_mlops.data import hats
    from hyrax_mlops.errors import ConfigError

    if not value:
        raise ConfigError(f"config key '{key}' is required for this stage. Fix: --set {key}=PATH")
    base = str(value).partition("?")[0]
    if hats.is_hats(value):
        return str(hats.check(str(value), key))
    if base != str(value):
        raise ConfigError(f"config key '{key}' = '{value}': ?columns, cone and box select from a "
                          "HATS catalog (a folder with hats.properties); this is not one. Fix: "
                          "name the file alone, or the HATS catalog's folder.")
    p = Path(value).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"config key '{key}' points to '{value}', which is not an existing "
                          f"file or HATS catalog. Fix: --set {key}=PATH to an existing file or a "
                          "HATS catalog's folder.")
    return p


def read_table(path: str | Path) -> pd.DataFrame:
    """Any CSV, Parquet or FITS table, or HATS catalog (e.g. a reference to crossmatch with)."""
    return _read(path, id_column=None)


def read_catalog(path: str | Path) -> pd.DataFrame:
    """The catalog with `object_id` as exact text; a missing column, empty or repeated ids and
    a catalog without rows are `DataError`s naming the file, the rows and the fix."""
    df = _read(path, id_column="object_id")
    if df.empty:
        raise DataError(f"catalog '{path}' has a header but no rows: nothing to ingest. "
                        "Fix: add one row per object.")
    ids = df["object_id"]
    empty = [i for i, v in enumerate(ids) if not isinstance(v, str) or not v.strip()]
    if empty:
        raise DataError(f"catalog '{path}' has an empty object_id in data row(s) "
                        f"{_rows(empty)} (row 1 is the first row after the header). "
                        "Fix: give every row an id.")
    ids = ids.map(lambda v: str(v).strip())
    df["object_id"] = ids
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        groups = dup.groupby(dup, sort=False).groups
        shown = "; ".join(f"'{oid}' (rows {_rows(list(rows))})"
                          for oid, rows in list(groups.items())[:_SHOW])
        more = f" and {len(groups) - _SHOW} more" if len(groups) > _SHOW else ""
        raise DataError(f"catalog '{path}' repeats object_id values: {shown}{more}. "
                        "Fix: give each object one row with a unique id.")
    return df.reset_index(drop=True)


def _read(path: str | Path, id_column: str | None) -> pd.DataFrame:
    from hyrax_mlops.data import hats

    if hats.is_hats(path):
        df = _read_hats(str(path), id_column)
    else:
        df = _read_file(Path(path), id_column)
    if id_column and id_column not in df.columns:
        cols = ", ".join(str(c)[:40] for c in list(df.columns)[:20])
        more = ", ..." if len(df.columns) > 20 else ""
        raise DataError(f"catalog '{path}' has no 'object_id' column (columns: {cols}{more}). "
                        "Fix: rename your id column to object_id.")
    return df


def _read_hats(path: str, id_column: str | None) -> pd.DataFrame:
    """A HATS catalog's selected rows and columns, ids as exact text (as for Parquet)."""
    from hyrax_mlops.data import hats

    table = hats.read(hats.parse(path), id_column)
    df = table.to_pandas()
    if id_column and id_column in table.column_names:
        df[id_column] = _arrow_ids(Path(path), table.column(id_column))
    return df


def _read_file(path: Path, id_column: str | None) -> pd.DataFrame:
    kind = _kind(path)
    if not kind:
        raise DataError(f"catalog '{path}' is not .csv, .csv.gz, .parquet or .fits, nor a HATS "
                        "catalog: cannot read it. Fix: save it in one of these formats, with "
                        "that suffix (or give the HATS catalog's folder).")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"catalog '{path}' cannot be read ({exc.strerror}). "
                        "Fix: point to a readable file.") from None
    if size == 0:
        raise DataError(f"catalog '{path}' is empty (0 bytes). Fix: point to the catalog file.")
    reader = {"csv": _read_csv, "parquet": _read_parquet, "fits": _read_fits_table}[kind]
    try:
        df = reader(path, id_column)
    except DataError:
        raise
    except Exception as exc:  # whatever the parser says, the user sees one clear line
        what = {"csv": "a CSV table", "parquet": "a Parquet table", "fits": "a FITS table"}[kind]
        why = " ".join(str(exc).split())[:200]  # one line
        raise DataError(f"catalog '{path}' cannot be read as {what} ({type(exc).__name__}: "
                        f"{why}). Fix: check that the file is {what}; the format is chosen by "
                        "the suffix.") from None
    return df


def _read_csv(path: Path, id_column: str | None) -> pd.DataFrame:
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(_SNIFF)
    except (OSError, EOFError):
        raise DataError(f"catalog '{path}' is not gzip-compressed CSV. Fix: name a "
                        "plain CSV '.csv', or compress it with gzip.") from None
    if b"\x00" in head:
        raise DataError(f"catalog '{path}' is not a text CSV file (it holds binary bytes). "
                        "Fix: point to the CSV catalog, or give a Parquet/FITS table its "
                        "suffix.")
    if not head.strip():
        raise DataError(f"catalog '{path}' holds no header and no rows (only blank space). "
                        "Fix: point to the catalog file.")
    if not id_column:
        return pd.read_csv(path)
    columns = list(pd.read_csv(path, nrows=0).columns)
    if id_column not in columns:
        return pd.read_csv(path)
    return pd.read_csv(path, dtype={id_column: str}, keep_default_na=False,
                       na_values={c: _NA for c in columns if c != id_column})


def _read_parquet(path: Path, id_column: str | None) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    df = table.to_pandas()
    if id_column and id_column not in df.columns and id_column in (df.index.names or []):
        df = df.reset_index()
    if id_column and id_column in table.column_names:
        df[id_column] = _arrow_ids(path, table.column(id_column))
    return df


def _arrow_ids(path: Path, column: Any) -> list[str | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_dictionary(t):
        return _arrow_ids(path, pc.cast(column, t.value_type))
    if pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0):
        return pc.cast(column, pa.string()).to_pylist()  # exact decimal text
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column.to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [_decode(path, v) for v in column.to_pylist()]
    if pa.types.is_floating(t):
        return _float_ids(path, np.asarray(column.to_numpy(zero_copy_only=False), float))
    raise DataError(f"catalog '{path}': object_id is a column of type {t}; ids must be text or "
                    "integers. Fix: write object_id as a string or int64 column.")


def _read_fits_table(path: Path, id_column: str | None) -> pd.DataFrame:
    import warnings

    from astropy.table import Table
    from astropy.utils.exceptions import AstropyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        table = Table.read(path, format="fits")
    ids = None
    if id_column and id_column in table.colnames:
        ids = _numpy_ids(path, table[id_column])
    scalar = [name for name in table.colnames if table[name].ndim <= 1 and name != id_column]
    df = table[scalar].to_pandas() if scalar else pd.DataFrame(index=range(len(table)))
    for col in df.columns:  # FITS strings may arrive as bytes
        if df[col].dtype == object and len(df) and isinstance(df[col].iloc[0], bytes):
            df[col] = df[col].map(lambda v: v.decode("utf-8", "replace").strip()
                                  if isinstance(v, bytes) else v)
    if ids is not None:  # back where it was among the columns
        before = table.colnames[:table.colnames.index(id_column)]
        df.insert(sum(1 for c in before if c in scalar), id_column, ids)
    return df


def _numpy_ids(path: Path, column: Any) -> list[str | None]:
    data = np.asarray(column)
    mask = np.asarray(getattr(column, "mask", np.zeros(len(data), bool)), bool)
    if data.ndim != 1:
        raise DataError(f"catalog '{path}': object_id holds arrays, not one id per row. "
                        "Fix: write one id per row.")
    kind = data.dtype.kind
    if kind in "iu":
        out = [str(int(v)) for v in data.tolist()]  # Python ints: exact, whatever the width
    elif kind == "S":
        out = [_decode(path, v) for v in data.tolist()]
    elif kind == "U":
        out = [str(v) for v in data.tolist()]
    elif kind == "f":
        out = _float_ids(path, data.astype(float))
    elif kind == "O":
        out = [_decode(path, v) if isinstance(v, bytes) else (None if v is None else str(v))
               for v in data.tolist()]
    else:
        raise DataError(f"catalog '{path}': object_id is a column of type {data.dtype}; ids "
                        "must be text or integers. Fix: write object_id as text or int64.")
    return [None if m else v for v, m in zip(out, mask, strict=True)]


def _decode(path: Path, value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError:
        raise DataError(f"catalog '{path}': an object_id is not UTF-8 text. "
                        "Fix: write ids as UTF-8 (or ASCII) text.") from None


def _float_ids(path: Path, values: np.ndarray) -> list[str | None]:
    """A float id column is accepted only when every value is a whole number a float holds
    exactly (below 2**53); NaN is an empty id."""
    finite = np.isfinite(values)
    fraction = np.flatnonzero(finite & (values != np.round(values)))
    if len(fraction):
        raise DataError(f"catalog '{path}': object_id is a floating-point column with "
                        f"fractional values in data row(s) {_rows(list(fraction))}. Ids must be "
                        "text or integers. Fix: write object_id as a string or int64 column.")
    big = np.flatnonzero(finite & (np.abs(values) >= _FLOAT_EXACT))
    if len(big):
        raise DataError(f"catalog '{path}': object_id is a floating-point column with values "
                        f"of 2**53 or more (data row(s) {_rows(list(big))}), where a float has "
                        "already lost digits of the id. Fix: write object_id as a string or "
                        "int64 column.")
    return [str(int(v)) if ok else None for v, ok in zip(values.tolist(), finite, strict=True)]


# --- files named by a catalog: inside their folder, or not opened at all -----------------

class OutsideFolder(ValueError):
    """A catalog names a file that is not inside the folder it must be in."""


class NotAFile(ValueError):
    """A catalog names something that is no file: empty name, NUL byte, symlink loop,
    a directory, a device."""


_MAX_LINKS = 40


def resolve_inside(base: Path, name: str) -> Path:
    """The real path of `name` (relative to `base`, or absolute inside it), following symlinks
    only while they stay inside `base`. Raises `OutsideFolder` for `..` out of the folder, an
    absolute path elsewhere, `~`, or a symlink leading out — without touching anything outside —
    `FileNotFoundError` when it does not exist, and `NotAFile` when it is not a regular file."""
    name = name.strip()
    if not name:
        raise NotAFile("the file name is empty")
    if "\x00" in name:
        raise NotAFile("the file name holds a NUL byte")
    if name.startswith("~"):
        raise OutsideFolder(f"'{name}' is in a home folder, not in {base}")
    given = Path(os.path.abspath(base))
    real = Path(os.path.realpath(base))
    parts = _parts_inside(Path(name), (real, given))
    if parts is None:
        raise OutsideFolder(f"'{name}' is an absolute path outside {base}")
    current, links = real, 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current == real:
                raise OutsideFolder(f"'{name}' leads out of {base} through '..'")
            current = current.parent
            continue
        nxt = current / part
        try:
            st = os.lstat(nxt)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"'{name}' does not exist in {base}") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise NotAFile(f"'{name}' is a loop of symlinks")
            target = Path(os.readlink(nxt))
            if target.is_absolute():
                inner = _parts_inside(target, (real, given))
                if inner is None:
                    raise OutsideFolder(f"'{name}' is a symlink to a file outside {base}")
                parts, current = inner + parts, real
            else:
                parts = list(target.parts) + parts
            continue
        current = nxt
    st = os.stat(current)  # `current` is real (no symlink left) and inside `base`
    if stat.S_ISDIR(st.st_mode):
        raise NotAFile(f"'{name}' is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise NotAFile(f"'{name}' is not a regular file")
    return current


def _parts_inside(path: Path, bases: tuple[Path, ...]) -> list[str] | None:
    """Components of `path` below one of `bases` (all of a relative path); None when an
    absolute path lies under none of them."""
    if not path.is_absolute():
        return list(path.parts)
    for b in bases:
        if path.parts[:len(b.parts)] == b.parts:
            return list(path.parts[len(b.parts):])
    return None
