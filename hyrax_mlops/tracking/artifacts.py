"""The artifact cache: a run's artifacts as local files, read in place from a local store,
else downloaded once per run into a folder (`tracking.cache_dir`). Stages make one from their
config and hand it to what reads artifacts, which never sees the config."""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from hyrax_mlops.config import Config, TrackingConfig

_DEFAULT_DIR = TrackingConfig().cache_dir


@functools.lru_cache(maxsize=4096)
def _artifact_uri(store: str, run_id: str) -> str:
    """A run's artifact location never changes: one store query per run, not per read."""
    import mlflow

    return mlflow.get_run(run_id).info.artifact_uri


def local_path(uri: str, path: str = "") -> Path | None:
    """`path` under an artifact location when that location is a local directory and the
    path exists there, else None (an object store, a server)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    target = Path(unquote(parsed.path)) / path
    return target if target.exists() else None


def local_artifact(run_id: str, path: str) -> Path | None:
    """The artifact's own path when the run's artifact store is a local directory."""
    import mlflow

    return local_path(_artifact_uri(mlflow.get_tracking_uri(), run_id), path)


@dataclass(frozen=True)
class ArtifactCache:
    """Local copies of runs' artifacts, under `root`, one folder per run id."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path = _DEFAULT_DIR) -> ArtifactCache:
        return cls(Path(folder).expanduser().resolve())

    @classmethod
    def of(cls, cfg: Config) -> ArtifactCache:
        """The cache a config names (`tracking.cache_dir`)."""
        return cls.at(cfg.tracking.cache_dir)

    def work_dir(self, *parts: str) -> Path:
        """A folder of its own for a stage's working files (a download's journal)."""
        return self.root.joinpath(*parts)

    def fetch(self, run_id: str, path: str) -> Path:
        """Local copy of a run's artifact (file or folder), through MLflow, cached by run id.

        Works the same for a local store and a remote one (S3, an MLflow server). Artifacts
        that already sit on a local disk are read where they are: copying gigabytes of shards
        would cost more than the work that reads them.
        """
        import fcntl

        import mlflow

        local = local_artifact(run_id, path)
        if local is not None:
            return local
        root = self.root / run_id
        key = hashlib.sha1(path.encode()).hexdigest()[:10]
        marker = root / f".complete-{key}"
        target = root / path
        if marker.exists() and target.exists():
            return target
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".lock-{key}", "w") as lock:  # workers on one machine share it
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.exists() and target.exists():
                return target
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                dst_path=str(root))
            marker.touch()
        return target
