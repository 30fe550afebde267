"""`ingest`: a directory of the user's FITS cutouts plus a catalog, as a dataset run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hyrax_mlops.config import Config, require_path
from hyrax_mlops.sources.local_fits import fingerprint, ingest_directory
from hyrax_mlops.stages._dataset import log_dataset
from hyrax_mlops.tracking import StageRun, StageSpec, run_stage

SECTIONS = ("ingest",)


def check(cfg: Config) -> tuple[Path, Path]:
    return (require_path(cfg, "ingest.cutouts_dir", "dir"),
            require_path(cfg, "ingest.catalog", "file"))


def run(cfg: Config, *, force: bool = False, parent_run_id: str | None = None) -> StageRun:
    cutouts, catalog = check(cfg)
    spec = StageSpec("ingest", SECTIONS, fingerprint=fingerprint(cutouts, catalog))

    def body(run_id: str) -> None:
        with tempfile.TemporaryDirectory(prefix="hyrax-ingest-") as tmp:
            out = Path(tmp) / "dataset"
            log_dataset(out, ingest_directory(cfg.ingest, cutouts, catalog, out))

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)
