"""`download`: fetch cutouts from a registered source into a dataset run.

Survey downloads keep their journal and staged cutouts in `<tracking.cache_dir>/downloads/
<run_id>/` until the dataset is logged, so a run killed at any moment (even `kill -9`)
continues with `hyrax-mlops download --resume RUN_ID`, into the same run, fetching only what
is missing. While it works, the run shows done/failed/retries, rate and ETA as metrics and
a copy of the journal as an artifact; at the end, `download/failures.csv` lists every object
that could not be fetched, with the reason.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

from hyrax_mlops.config import Config
from hyrax_mlops.downloader.engine import Stats
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.sources import SOURCES
from hyrax_mlops.sources.survey import SURVEYS, DownloadContext, survey_source
from hyrax_mlops.stages._dataset import log_dataset
from hyrax_mlops.tracking import ArtifactCache, StageRun, StageSpec, run_stage

SECTIONS = ("download", "data.mode")  # a stream download keeps the catalog, not pixels
METRICS_EVERY_S = 5.0
JOURNAL_EVERY_S = 60.0


def check(cfg: Config):
    try:
        source = SOURCES.get(cfg.download.source)
    except KeyError as exc:
        raise ConfigError(f"config key 'download.source': {exc}") from None
    if cfg.download.source in SURVEYS:
        from hyrax_mlops.data.catalogs import require_catalog

        catalog = require_catalog(cfg.download.catalog, "download.catalog")
        from hyrax_mlops.sources.survey import read_targets

        targets, _, _ = read_targets(catalog, cfg.download.limit)  # unreadable: DataError
        if not targets:
            from hyrax_mlops.errors import DataError

            raise DataError(f"catalog '{catalog}' has no row with a usable position (ra, dec "
                            "in degrees): there is nothing to download.")
        # a bad band, a missing Butler or missing credentials stop here, before a run exists
        survey_source(cfg.download).credentials()
    elif cfg.data.mode == "stream":
        raise ConfigError(f"data.mode = \"stream\" fetches cutouts from a survey source "
                          f"({', '.join(n for n in SURVEYS.names() if n in SOURCES)}), not from "
                          f"download.source = '{cfg.download.source}'. Fix: set "
                          "download.source, or data.mode = \"dataset\".")
    return source


def _stream_body(cfg: Config):
    def body(run_id: str) -> None:
        from hyrax_mlops.sources.stream import write_stream_dataset

        with tempfile.TemporaryDirectory(prefix="hyrax-stream-") as tmp:
            out = Path(tmp) / "dataset"
            from hyrax_mlops.data.catalogs import catalog_location

            manifest = write_stream_dataset(cfg.download, catalog_location(cfg.download.catalog),
                                            out)
            import mlflow

            mlflow.set_tag("hyrax.dataset.mode", "stream")
            log_dataset(out, manifest)

    return body


class _Reporter:
    """Progress as MLflow metrics (throttled) and the journal mirrored as an artifact."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.last_metrics = self.last_journal = 0.0

    def __call__(self, phase: str, stats: Stats) -> None:
        import mlflow

        now = time.monotonic()
        final = stats.done + stats.failed >= stats.total
        if now - self.last_metrics >= METRICS_EVERY_S or final:
            self.last_metrics = now
            eta = stats.eta()
            mlflow.log_metrics({
                f"download.{phase}.done": stats.done, f"download.{phase}.failed": stats.failed,
                f"download.{phase}.retries": stats.retries,
                f"download.{phase}.rate_per_s": round(stats.rate(), 3),
                f"download.{phase}.eta_s": round(eta, 1) if eta != float("inf") else -1.0,
            }, step=stats.done + stats.failed)
        if now - self.last_journal >= JOURNAL_EVERY_S:  # the run's end mirrors them anyway
            self.last_journal = now
            self.mirror_journals()

    def mirror_journals(self) -> None:
        import mlflow

        for path in sorted(self.work.glob("*.jsonl")):
            mlflow.log_artifact(str(path), "download")


def _log_failures_by_reason(manifest: dict) -> None:
    """`n_failed.<reason>` metrics: what the stage's summary says failed, and why."""
    import mlflow

    by_reason = manifest.get("counts", {}).get("failed_by_reason") or {}
    if by_reason:
        mlflow.log_metrics({f"n_failed.{k}": int(v) for k, v in by_reason.items()})


def _write_failures(manifest: dict, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.DictWriter(fh, ["object_id", "reason", "detail"], extrasaction="ignore")
        out.writeheader()
        out.writerows(manifest["failures"])


def _body(cfg: Config, source):
    def body(run_id: str) -> None:
        import mlflow

        work = ArtifactCache.of(cfg).work_dir("downloads", run_id)
        work.mkdir(parents=True, exist_ok=True)
        reporter = _Reporter(work)
        ctx = DownloadContext(work, reporter)
        with tempfile.TemporaryDirectory(prefix="hyrax-download-") as tmp:
            out = Path(tmp) / "dataset"
            manifest = source(cfg.download, out, ctx)
            _log_failures_by_reason(manifest)
            if ctx.info.get("credentials"):
                mlflow.set_tag("hyrax.download.credentials", ctx.info["credentials"])
            reporter.mirror_journals()
            _write_failures(manifest, Path(tmp) / "failures.csv")
            mlflow.log_artifact(str(Path(tmp) / "failures.csv"), "download")
            log_dataset(out, manifest)
        shutil.rmtree(work, ignore_errors=True)  # logged: the staged copy is no longer needed

    return body


def run(cfg: Config, *, force: bool = False, parent_run_id: str | None = None) -> StageRun:
    return run_stage(*_spec_and_body(cfg), force=force, parent_run_id=parent_run_id)


def catalog_fingerprint(cfg: Config) -> str | None:
    """sha256 of a survey download's catalog file (a HATS catalog's fingerprint): its content,
    not its path, is what the dataset is made of (a catalog edited in place makes a new
    download run)."""
    if cfg.download.source not in SURVEYS or not cfg.download.catalog:
        return None
    from hyrax_mlops.data.catalogs import catalog_digest, catalog_location

    return f"catalog-sha256:{catalog_digest(catalog_location(cfg.download.catalog))}"


def _spec_and_body(cfg: Config):
    source = check(cfg)  # the catalog exists from here on
    catalog = catalog_fingerprint(cfg)
    if cfg.data.mode == "stream":  # the catalog and what to fetch; pixels come per batch
        fingerprint = "stream" + (f"+{catalog}" if catalog else "")
        return (StageSpec("download", SECTIONS, fingerprint=fingerprint,
                          name=_run_name(cfg, "stream")), cfg, _stream_body(cfg))
    return (StageSpec("download", SECTIONS, fingerprint=catalog, name=_run_name(cfg)), cfg,
            _body(cfg, source))


def _run_name(cfg: Config, mode: str = "") -> str:
    """e.g. "download-xdf-n300", "download-hsc-catalog_name-stream"."""
    from hyrax_mlops.tracking import name_hint

    d = cfg.download
    from hyrax_mlops.data.catalogs import catalog_location, catalog_stem

    catalog = catalog_stem(catalog_location(d.catalog))[:20] if d.catalog else ""
    return name_hint("download", d.source, catalog, f"n{d.limit}" if d.limit else "", mode)


def resume(run_id: str) -> StageRun:
    """Continue an interrupted download run in place, with the config it was started with."""
    from hyrax_mlops.tracking import interrupted_run

    _, made_with = interrupted_run(run_id, "download")
    cfg = made_with.only(SECTIONS, "download")  # as the body saw it the first time
    return run_stage(*_spec_and_body(cfg), resume_run_id=run_id)
