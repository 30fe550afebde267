"""HATS catalogs wherever a catalog is named, read with LSDB, with columns and a sky region
pushed down to the reader (only the partitions that overlap the region, only the columns asked
for, are read).

A catalog key names a HATS catalog by its folder (the one with `hats.properties`) or by an
`s3://` URL, optionally followed by what to read:

    tests/data/hats/oac_transients?columns=name,ra,dec&cone=172.1,58.5,3600
    s3://bucket/dp1/object?box=52.5,53.5,-28.5,-27.5

`cone=RA,DEC,RADIUS_ARCSEC`, `box=RA_MIN,RA_MAX,DEC_MIN,DEC_MAX` (degrees). An `s3://` catalog
reads with the store settings the artifacts use (`$MLFLOW_S3_ENDPOINT_URL` or
`$AWS_ENDPOINT_URL`, credentials from the usual AWS variables) and needs `s3fs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd

from hyrax_mlops.errors import ConfigError, DataError

PROPERTIES = ("hats.properties", "properties")  # the second: catalogs from HATS before 0.4
_OPTIONS = ("columns", "cone", "box")


@dataclass(frozen=True)
class HatsCatalog:
    """A HATS catalog and what to read of it."""

    location: str  # a local folder (absolute) or a URL
    columns: tuple[str, ...] = ()
    cone: tuple[float, float, float] | None = None  # ra, dec (deg), radius (arcsec)
    box: tuple[float, float, float, float] | None = None  # ra_min, ra_max, dec_min, dec_max

    @property
    def remote(self) -> bool:
        return "://" in self.location

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        parts = []
        if self.columns:
            parts.append("columns=" + ",".join(self.columns))
        for key in ("cone", "box"):
            value = getattr(self, key)
            if value:
                parts.append(f"{key}=" + ",".join(repr(v) for v in value))  # exact
        return self.location + ("?" + "&".join(parts) if parts else "")


def _split(value: str) -> tuple[str, str]:
    base, _, query = str(value).partition("?")
    return base, query


def is_hats(value: str | Path) -> bool:
    """True when `value` names a HATS catalog: an `s3://` URL, or a folder with hats.properties."""
    base, _ = _split(str(value))
    if base.startswith("s3://"):
        return True
    p = Path(base).expanduser()
    return p.is_dir() and any((p / name).is_file() for name in PROPERTIES)


def parse(value: str | Path, key: str = "catalog") -> HatsCatalog:
    """The HATS catalog `value` names, with its options checked (a `ConfigError` naming `key`)."""
    base, query = _split(str(value))
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = [k for k in options if k not in _OPTIONS]
    if unknown:
        raise ConfigError(f"config key '{key}': unknown HATS option(s) {', '.join(unknown)} in "
                          f"'{value}'. Valid: {', '.join(_OPTIONS)}, e.g. "
                          "?columns=object_id,ra,dec&cone=RA,DEC,RADIUS_ARCSEC")
    location = base if "://" in base else str(Path(base).expanduser().resolve())

    def numbers(name: str, n: int) -> tuple[float, ...] | None:
        if name not in options:
            return None
        try:
            nums = tuple(float(v) for v in options[name].split(","))
        except ValueError:
            nums = ()
        if len(nums) != n:
            what = ("RA,DEC,RADIUS_ARCSEC" if name == "cone"
                    else "RA_MIN,RA_MAX,DEC_MIN,DEC_MAX")
            raise ConfigError(f"config key '{key}': {name}={options[name]!r} must be {what} "
                              "(degrees, and arcseconds for the radius).")
        return nums

    cone, box = numbers("cone", 3), numbers("box", 4)
    if cone and box:
        raise ConfigError(f"config key '{key}': give a cone or a box, not both.")
    if cone and not (cone[2] > 0 and -90 <= cone[1] <= 90):
        raise ConfigError(f"config key '{key}': cone needs -90 <= dec <= 90 and a radius > 0 "
                          f"arcsec, got {options['cone']!r}.")
    if box and not (box[2] < box[3] and box[2] >= -90 and box[3] <= 90):
        raise ConfigError(f"config key '{key}': box needs DEC_MIN < DEC_MAX within -90..90, "
                          f"got {options['box']!r}.")
    columns = tuple(c.strip() for c in options.get("columns", "").split(",") if c.strip())
    return HatsCatalog(location, columns, cone, box)  # type: ignore[arg-type]


@contextlib.contextmanager
def _quiet():
    """LSDB's and its libraries' deprecation chatter (pandas 4 notices) off the terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(lsdb|nested_pandas|hats|dask)(\.|$)")
        yield


def _storage_options(cat: HatsCatalog) -> dict | None:
    if not cat.location.startswith("s3://"):
        return None
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def _open(cat: HatsCatalog, columns: list[str] | None):
    try:
        import lsdb
    except ImportError:
        raise ConfigError("reading a HATS catalog needs LSDB: pip install 'hyrax-mlops[hats]'"
                          ) from None
    search = None
    if cat.cone:
        search = lsdb.ConeSearch(ra=cat.cone[0], dec=cat.cone[1], radius_arcsec=cat.cone[2])
    elif cat.box:
        search = lsdb.BoxSearch(ra=(cat.box[0], cat.box[1]), dec=(cat.box[2], cat.box[3]))
    try:
        with _quiet():
            return lsdb.open_catalog(cat.location, columns=columns or None,
                                     search_filter=search, error_empty_filter=False,
                                     storage_options=_storage_options(cat))
    except ImportError as exc:  # s3:// without s3fs
        raise ConfigError(f"HATS catalog '{cat.location}' needs a package that is not installed "
                          f"({exc}). Fix: pip install s3fs") from None
    except ValueError as exc:
        if "not" in str(exc) and "column" in str(exc).lower():
            raise DataError(f"HATS catalog '{cat}': {exc}") from None
        raise


def column_names(cat: HatsCatalog) -> list[str]:
    """The catalog's columns, from its metadata (no partition is read)."""
    catalog = _open(HatsCatalog(cat.location), None)
    names = [c for c in catalog.hc_structure.schema.names if c != "_healpix_29"]
    return [c for c in names if c in cat.columns] if cat.columns else names


def read(cat: HatsCatalog, id_column: str | None = None):
    """The rows in the region, the columns asked for (and `id_column`), as an Arrow table."""
    import pyarrow as pa

    columns = list(cat.columns)
    if columns and id_column and id_column not in columns:
        columns.insert(0, id_column)
    try:
        with _quiet():
            frame = _open(cat, columns).compute(progress_bar=False)
    except (ConfigError, DataError):
        raise
    except Exception as exc:
        raise DataError(f"HATS catalog '{cat}' cannot be read ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}). Fix: point to a complete HATS "
                        "catalog (hats.properties, partition_info.csv and every partition "
                        "under dataset/), e.g. one written by hats-import.") from None
    frame = pd.DataFrame(frame).reset_index(drop=True)
    return pa.Table.from_pandas(frame, preserve_index=False)


def fingerprint(cat: HatsCatalog) -> str:
    """What identifies the catalog's content and the selection: its properties, its partition
    list and (local) each data file's size and mtime, and the options."""
    h = hashlib.sha256(str(cat).encode())
    if cat.remote:
        catalog = _open(HatsCatalog(cat.location), None)
        h.update(str(sorted(map(str, catalog.get_healpix_pixels()))).encode())
        return h.hexdigest()
    root = Path(cat.location)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def check(value: str, key: str) -> HatsCatalog:
    """The HATS catalog a key names, checked to exist before any run (`ConfigError` otherwise)."""
    cat = parse(value, key)
    if not cat.remote and not is_hats(cat.location):
        raise ConfigError(f"config key '{key}' points to '{value}', which is not a HATS catalog "
                          "(a folder with hats.properties). Fix: --set "
                          f"{key}=PATH to the catalog's folder.")
    return cat
