"""What download and ingest share: log a written dataset as the run's artifacts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hyrax_mlops.data.dataset import ARTIFACT_DIR, check_usable


def log_dataset(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Log the dataset, report failures; an empty dataset fails the run after logging."""
    import mlflow

    counts = manifest["counts"]
    mlflow.log_artifacts(str(out_dir), ARTIFACT_DIR)
    mlflow.log_metrics({"n_objects": counts["ingested"], "n_failed": counts["failed"],
                        "n_requested": counts["requested"]})
    mlflow.set_tags({"hyrax.dataset.shape": "x".join(map(str, manifest["shape"])),
                     "hyrax.dataset.bands": ",".join(manifest["bands"]),
                     "hyrax.failures": str(counts["failed"])})
    holds = (f"stamps {'x'.join(map(str, manifest['shape']))}" if manifest["shape"] else
             "no stamps (" + ", ".join(manifest.get("modalities") or ["catalog"]) + ")")
    msg = f"[hyrax] dataset: {counts['ingested']} of {counts['requested']} objects, {holds}"
    if counts["failed"]:
        reasons = ", ".join(f"{k} {v}" for k, v in counts["failed_by_reason"].items())
        examples = "; ".join(f"{f['object_id']} ({f['reason']}: {f['detail']})"
                             for f in manifest["failures"][:5])
        msg += f"; {counts['failed']} failed ({reasons}), listed in {ARTIFACT_DIR}/manifest.json" \
               f": {examples}"
    print(msg, file=sys.stderr, flush=True)
    check_usable(manifest)
