"""`filter`: a dataset run without some objects (e.g. the artefacts an outlier ranking found),
with lineage to the dataset it came from and the removed ids, with why, as an artifact."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hyrax_mlops.config import Config
from hyrax_mlops.errors import DataError
from hyrax_mlops.tracking import ArtifactCache, StageRun, StageSpec, run_stage

REMOVED = "filter/removed_ids.csv"


def run(cfg: Config, dataset_run_id: str, remove: Sequence[str], *, reason: str = "",
        force: bool = False, parent_run_id: str | None = None) -> StageRun:
    """A copy of `dataset_run_id` without the objects in `remove`."""
    ids = sorted({str(i) for i in remove})
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    spec = StageSpec("filter", (), inputs={"dataset": dataset_run_id}, fingerprint=digest,
                     name=f"filter-minus{len(ids)}")

    def body(run_id: str) -> None:
        _filter(cfg, dataset_run_id, ids, reason)

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)


def _filter(cfg: Config, dataset_run_id: str, ids: list[str], reason: str) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset, DatasetWriter
    from hyrax_mlops.stages._dataset import log_dataset

    source = Dataset(ArtifactCache.of(cfg).fetch(dataset_run_id, ARTIFACT_DIR))
    if source.streamed:
        raise DataError("a streamed dataset has no shards to filter: download it first "
                        "(data.mode = \"dataset\")")
    drop = np.isin(source.ids, ids)
    unknown = sorted(set(ids) - set(source.ids))
    keep = np.flatnonzero(~drop)
    with tempfile.TemporaryDirectory(prefix="hyrax-filter-") as tmp:
        out = Path(tmp) / "dataset"
        writer = DatasetWriter(out, source.shape, source.bands,
                               int(source.manifest["shard_size"]))
        rows = source.catalog.iloc[keep].to_dict("records")
        step = 4096
        for start in range(0, len(keep), step):
            chunk = keep[start:start + step]
            stamps = source.images(chunk) if source.shape else [None] * len(chunk)
            for row, stamp in zip(rows[start:start + step], stamps, strict=True):
                writer.add(row, stamp)
        for name in ("lightcurves.parquet", "spectra.parquet"):  # series of the kept objects
            if (source.root / name).is_file():
                series = pd.read_parquet(source.root / name)
                series[~series["object_id"].astype(str).isin(ids)].to_parquet(out / name)
        info = {"name": "filter", "from": dataset_run_id, "removed": int(drop.sum()),
                "reason": reason, "unknown_ids": unknown[:100]}
        manifest = writer.close(info, requested=len(keep))
        pd.DataFrame({"object_id": source.ids[drop], "reason": reason}).to_csv(
            Path(tmp) / "removed_ids.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "removed_ids.csv"), "filter")
        mlflow.log_metric("n_removed", int(drop.sum()))
        log_dataset(out, manifest)
