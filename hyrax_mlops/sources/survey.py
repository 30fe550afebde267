"""What every survey cutout source shares: catalog rows in, a dataset of multi-band stamps out.

A source (HSC, Rubin, ...) only says how to ask its service for the cutouts of some
(object, band) items and how to read the answers; this module drives it through the download
engine, keeps the journal that makes a killed run resumable, and assembles the staged stamps
into the dataset format, with every object either in the dataset or in its failures.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyrax_mlops.config import DownloadConfig
from hyrax_mlops.downloader.engine import RetryPolicy, Stats, fetch_all
from hyrax_mlops.downloader.journal import Journal
from hyrax_mlops.downloader.staging import CutoutStore, item_key, split_item
from hyrax_mlops.errors import ConfigError, DataError
from hyrax_mlops.registry import Registry


@dataclass
class Target:
    object_id: str
    ra: float
    dec: float


@dataclass
class DownloadContext:
    """Where a download run keeps its work between a kill and a resume, and whom it tells."""

    work_dir: Path
    report: Callable[[str, Stats], None] = lambda phase, stats: None
    info: dict[str, Any] = field(default_factory=dict)  # the source's notes for the manifest
    show_progress: bool = True


class SurveySource(ABC):
    """A cutout service. Subclasses define `bands` (canonical names) and `fetch`."""

    name = "survey"
    pixel_scale = 0.2  # arcsec per pixel of the service's images

    def __init__(self, cfg: DownloadConfig) -> None:
        self.cfg = cfg
        self.scale = cfg.pixel_scale or self.pixel_scale
        self.bands = [self.canonical_band(b) for b in (cfg.bands or self.default_bands())]

    def default_bands(self) -> list[str]:
        return []

    def canonical_band(self, band: str) -> str:
        return band

    def credentials(self):
        """The service's credentials (`download.credentials.Credentials`); a `ConfigError`
        naming where to put them when there are none."""
        from hyrax_mlops.downloader.credentials import Credentials

        return Credentials()

    def half_size_deg(self) -> float:
        """Half the side of the square asked for: the stamp plus a 2-pixel margin, so that
        rounding at the service never leaves it a pixel short."""
        return (self.cfg.stamp_size / 2 + 2) * self.scale / 3600.0

    def policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.cfg.retries, base_s=self.cfg.backoff_s,
                           timeout_s=self.cfg.timeout_s)

    def run_engine(self, requests, accept, journal: Journal, ctx: DownloadContext,
                   phase: str, prepare=None, unit: str = "cutout") -> Stats:
        return fetch_all(requests, accept, journal, concurrency=self.cfg.concurrency,
                         policy=self.policy(), prepare=prepare, desc=f"{self.name} {phase}",
                         unit=unit, progress=lambda stats: ctx.report(phase, stats),
                         show_progress=ctx.show_progress)

    @staticmethod
    def record_failed_step(journal: Journal, key: str, why: dict[str, Any] | None,
                           step: str, reason: str) -> None:
        """Item `key` failed because a step before its cutout did (`why`: the step's journal
        entry; None when it was never answered, then `reason`)."""
        why = why or {"reason": reason, "detail": ""}
        journal.record(key, "failed", reason=why["reason"],
                       detail=f"{step}: {why.get('detail', '')}"[:500])

    @staticmethod
    def record_no_data(journal: Journal, key: str, what: str, target: Target) -> None:
        """Item `key` has no image at the service: the position is outside its footprint."""
        journal.record(key, "failed", reason="no_data",
                       detail=f"no {what} at ra={target.ra:.6f} dec={target.dec:.6f}")

    @abstractmethod
    def fetch(self, pending: list[tuple[Target, str]], store: CutoutStore, journal: Journal,
              ctx: DownloadContext) -> None:
        """Fetch the (target, band) cutouts not yet done into `store`, recording each item
        (`item_key(object_id, band)`) in `journal` as done or failed with its reason."""


SURVEYS: Registry[type[SurveySource]] = Registry(
    "survey source", builtins=("hyrax_mlops.sources.hsc", "hyrax_mlops.sources.rubin",
                               "hyrax_mlops.sources.rubin_butler", "hyrax_mlops.sources.euclid"))
BUTLER = "rubin-butler"  # Rubin read from a Butler repo (download.rubin.butler_repo)


def survey_source(cfg: DownloadConfig) -> SurveySource:
    """The survey source `cfg.source` names, built (bands checked) from the config: Rubin's
    from a Butler when `download.rubin.butler_repo` is set, else from its SODA service."""
    name = BUTLER if cfg.source == "rubin" and cfg.rubin.butler_repo else cfg.source
    return SURVEYS.get(name)(cfg)


def fetch_survey(cfg: DownloadConfig, out_dir: Path, ctx: DownloadContext) -> dict[str, Any]:
    """The `download` source function of every survey (`hsc`, `rubin`, ...): cutouts of each
    `download.catalog` row in `download.bands`."""
    from hyrax_mlops.data.catalogs import catalog_location

    return download_survey(survey_source(cfg), cfg, catalog_location(cfg.catalog), out_dir, ctx)


def survey_entry(config_class: type) -> Callable[..., dict[str, Any]]:
    """A survey's entry in SOURCES: `fetch_survey`, carrying the survey's own keys (its
    `[download.<name>]` table) as `config_class`."""

    def fetch(cfg: DownloadConfig, out_dir: Path, ctx: DownloadContext) -> dict[str, Any]:
        return fetch_survey(cfg, out_dir, ctx)

    fetch.config_class = config_class
    return fetch


def read_targets(path: Path | str, limit: int = 0) -> tuple[list[Target], list[dict], dict]:
    """Catalog rows with a usable position, the rows themselves, and rows that have none."""
    from hyrax_mlops.data.catalogs import read_catalog

    catalog = read_catalog(path)
    missing = [c for c in ("ra", "dec") if c not in catalog.columns]
    if missing:
        raise DataError(f"catalog '{path}' has no {' or '.join(missing)} column (columns: "
                        f"{', '.join(map(str, catalog.columns))}). Fix: give positions in "
                        "degrees as ra and dec.")
    if limit:
        catalog = catalog.head(limit)
    rows = catalog.to_dict("records")
    targets, bad = [], {}
    for row in rows:
        ra, dec = float(row["ra"]), float(row["dec"])
        if not (np.isfinite(ra) and np.isfinite(dec) and -90 <= dec <= 90):
            bad[row["object_id"]] = f"ra={row['ra']!r}, dec={row['dec']!r}"
        else:
            targets.append(Target(str(row["object_id"]), ra % 360.0, dec))
    return targets, rows, bad


def channel_names(bands: list[str], layers: list[str]) -> list[str]:
    return [b if layer == "image" else f"{b}:{layer}" for b in bands for layer in layers]


def download_survey(source: SurveySource, cfg: DownloadConfig, catalog: Path | str, out_dir: Path,
                    ctx: DownloadContext) -> dict[str, Any]:
    """Fetch what is missing for every catalog row, then write the dataset."""
    from hyrax_mlops.data.dataset import DatasetWriter

    if not source.bands:
        raise ConfigError(f"config key 'download.bands' is empty and source '{source.name}' "
                          "has no default bands. Fix: --set download.bands=[...]")
    targets, rows, bad_position = read_targets(catalog, cfg.limit)
    store = CutoutStore(ctx.work_dir / "cutouts")
    started = time.monotonic()
    with Journal(ctx.work_dir / "journal.jsonl") as journal:
        # done in the journal but not on this disk (resumed elsewhere): fetch it again
        for key in [k for k in journal.done if not store.has(*split_item(k))]:
            del journal.done[key]
        pending = [(t, b) for t in targets for b in source.bands
                   if item_key(t.object_id, b) not in journal.done]
        if pending:
            source.fetch(pending, store, journal, ctx)
        done, failed = dict(journal.done), dict(journal.failed)
    fetch_s = time.monotonic() - started

    shape = (len(source.bands) * len(cfg.layers), cfg.stamp_size, cfg.stamp_size)
    writer = DatasetWriter(out_dir, shape, channel_names(source.bands, cfg.layers),
                           cfg.shard_size)
    by_id = {t.object_id: t for t in targets}
    nan_zeroed = 0
    for row in rows:
        oid = str(row["object_id"])
        if oid in bad_position:
            writer.fail(oid, "bad_position", bad_position[oid])
            continue
        keys = [item_key(oid, b) for b in source.bands]
        lost = [k for k in keys if k not in done]
        if lost:
            first = failed.get(lost[0], {"reason": "not_fetched", "detail": "no answer yet"})
            bands = ", ".join(split_item(k)[1] for k in lost)
            writer.fail(oid, first["reason"], f"{bands}: {first.get('detail', '')}"[:500])
            continue
        cube = np.concatenate([store.get(oid, b) for b in source.bands]).astype(np.float32)
        bad = ~np.isfinite(cube)
        if bad.any():  # no-data pixels at survey edges: zeroed, counted (the mask layer says)
            cube[bad] = 0.0
            nan_zeroed += 1
        row = dict(row, ra=by_id[oid].ra, dec=by_id[oid].dec)
        writer.add(row, cube)
    info = {"name": source.name, "catalog": str(catalog), "bands": source.bands,
            "layers": list(cfg.layers), "pixel_scale_arcsec": source.scale,
            "stamp_size": cfg.stamp_size, "fetch_seconds": round(fetch_s, 2),
            "nan_zeroed_objects": nan_zeroed, **ctx.info}
    return writer.close(info, requested=len(rows))
