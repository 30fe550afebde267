"""`download`: fetch cutouts from a registered source into a dataset run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hyrax_mlops.config import Config
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.sources import SOURCES
from hyrax_mlops.stages._dataset import log_dataset
from hyrax_mlops.tracking import StageRun, StageSpec, run_stage

SECTIONS = ("download",)


def check(cfg: Config):
    try:
        return SOURCES.get(cfg.download.source)
    except KeyError as exc:
        raise ConfigError(f"config key 'download.source': {exc}") from None


def run(cfg: Config, *, force: bool = False, parent_run_id: str | None = None) -> StageRun:
    source = check(cfg)

    def body(run_id: str) -> None:
        with tempfile.TemporaryDirectory(prefix="hyrax-download-") as tmp:
            out = Path(tmp) / "dataset"
            log_dataset(out, source(cfg.download, out))

    return run_stage(StageSpec("download", SECTIONS), cfg, body, force=force,
                     parent_run_id=parent_run_id)
