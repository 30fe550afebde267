"""`ingest`: a directory of the user's FITS cutouts plus a catalog, as a dataset run; or a
catalog alone (no `ingest.cutouts_dir`), a tabular dataset for models of catalog features.

`check` reads and validates the catalog (readable, not empty, an object_id in every row, no
repeats), so a bad catalog is a `DataError` before any run exists."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hyrax_mlops.config import Config, require_path
from hyrax_mlops.data.catalogs import catalog_digest, catalog_stem, read_catalog, require_catalog
from hyrax_mlops.data.series import series_fingerprint
from hyrax_mlops.sources.local_fits import fingerprint, ingest_catalog, ingest_directory
from hyrax_mlops.stages._dataset import log_dataset
from hyrax_mlops.tracking import StageRun, StageSpec, run_stage

SECTIONS = ("ingest",)


@dataclass
class IngestInputs:
    """What `check` found: the cutouts folder (None: catalog-only), the catalog (a file, or a
    HATS catalog's text) and its rows, read once."""

    cutouts: Path | None
    catalog_path: Path | str
    catalog: pd.DataFrame


def check(cfg: Config) -> IngestInputs:
    """The cutouts directory (None: a catalog-only dataset) and the catalog, read and checked."""
    cutouts = (require_path(cfg, "ingest.cutouts_dir", "dir") if cfg.ingest.cutouts_dir
               else None)
    path = require_catalog(cfg.ingest.catalog, "ingest.catalog")
    return IngestInputs(cutouts, path, _read_once(path))


_LAST: dict[tuple[str, str], pd.DataFrame] = {}


def _read_once(path: Path) -> pd.DataFrame:
    """`read_catalog`, remembered for the same file with the same bytes (a pipeline checks,
    then runs)."""
    key = (str(path), catalog_digest(path))
    if key not in _LAST:
        catalog = read_catalog(path)
        _LAST.clear()
        _LAST[key] = catalog
    return _LAST[key].copy()


def run(cfg: Config, *, force: bool = False, parent_run_id: str | None = None) -> StageRun:
    """Make (or reuse) the ingest run of `cfg`."""
    inputs = check(cfg)
    cutouts, catalog_path, catalog = inputs.cutouts, inputs.catalog_path, inputs.catalog
    key = series_fingerprint(catalog_path, cfg.ingest.lightcurve_column,
                             cfg.ingest.spectrum_column, catalog)
    if cutouts:
        key = f"{fingerprint(cutouts, catalog_path)}:{key}"
    name = "-".join(["ingest", *([cutouts.name[:24]] if cutouts else []),
                     catalog_stem(catalog_path)[:24]])
    spec = StageSpec("ingest", SECTIONS, fingerprint=key, name=name)

    def body(run_id: str) -> None:
        from hyrax_mlops.stages.download import _log_failures_by_reason

        with tempfile.TemporaryDirectory(prefix="hyrax-ingest-") as tmp:
            out = Path(tmp) / "dataset"
            manifest = (ingest_directory(cfg.ingest, cutouts, catalog_path, out, catalog)
                        if cutouts else ingest_catalog(cfg.ingest, catalog_path, out, catalog))
            _log_failures_by_reason(manifest)
            log_dataset(out, manifest)

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)
