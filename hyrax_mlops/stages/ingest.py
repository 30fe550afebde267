"""`ingest`: a directory of the user's FITS cutouts plus a catalog, as a dataset run; or a
catalog alone (no `ingest.cutouts_dir`), a tabular dataset for models of catalog features."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hyrax_mlops.config import Config, require_path
from hyrax_mlops.data.series import series_fingerprint
from hyrax_mlops.sources.local_fits import fingerprint, ingest_catalog, ingest_directory
from hyrax_mlops.stages._dataset import log_dataset
from hyrax_mlops.tracking import StageRun, StageSpec, run_stage

SECTIONS = ("ingest",)


def check(cfg: Config) -> tuple[Path | None, Path]:
    """The cutouts directory (None: a catalog-only dataset) and the catalog."""
    cutouts = (require_path(cfg, "ingest.cutouts_dir", "dir") if cfg.ingest.cutouts_dir
               else None)
    return cutouts, require_path(cfg, "ingest.catalog", "file")


def run(cfg: Config, *, force: bool = False, parent_run_id: str | None = None) -> StageRun:
    cutouts, catalog = check(cfg)
    inputs = series_fingerprint(catalog, cfg.ingest.lightcurve_column,
                                cfg.ingest.spectrum_column)
    if cutouts:
        inputs = f"{fingerprint(cutouts, catalog)}:{inputs}"
    spec = StageSpec("ingest", SECTIONS, fingerprint=inputs)

    def body(run_id: str) -> None:
        with tempfile.TemporaryDirectory(prefix="hyrax-ingest-") as tmp:
            out = Path(tmp) / "dataset"
            log_dataset(out, ingest_directory(cfg.ingest, cutouts, catalog, out) if cutouts
                        else ingest_catalog(cfg.ingest, catalog, out))

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)
