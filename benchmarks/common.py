"""What every benchmark shares: a scratch store for its work, machine facts, peak memory, and
the report, written as JSON under `benchmarks/results/` and logged as a run of the MLflow
experiment `benchmarks` in the user's store (the one `hyrax-mlops` itself would use).

Each report puts the platform's figure beside the reference's figure from the same run, and
their ratio; goals are stated in the report and checked there, never in unit tests.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENT = "benchmarks"


def user_store() -> str:
    """The store reports go to, resolved before a benchmark moves to its scratch directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary working directory with its own SQLite store for the benchmark's own runs."""
    report_store = user_store()
    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    work = Path(tempfile.mkdtemp(prefix=f"hyrax-bench-{prefix}-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["HYRAX_BENCH_REPORT_STORE"] = report_store
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def machine() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far. VmHWM, not ru_maxrss: a child started
    with fork+exec inherits its parent's ru_maxrss, which would blame it for the parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def in_subprocess(script: Path, *args: str, timeout: float = 7200) -> dict[str, Any]:
    """Run one cell of a benchmark in a fresh process (its own peak memory, a cold start) and
    return the JSON it prints last."""
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        elif isinstance(v, int | float):  # bools too
            out[key] = float(v)
    return out


def report(name: str, size: str, params: dict[str, Any], results: dict[str, Any],
           ratios: dict[str, float], goals: dict[str, str] | None = None,
           met: dict[str, bool] | None = None) -> Path:
    """Write `benchmarks/results/<name>-<size>.json` and log it to the `benchmarks` experiment."""
    body = {"benchmark": name, "size": size, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(), "params": params, "results": results, "ratios": ratios,
            "goals": goals or {}, "met": met or {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}-{size}.json"
    out.write_text(json.dumps(body, indent=2) + "\n")
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(os.environ.get("HYRAX_BENCH_REPORT_STORE") or user_store())
    try:
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"{name}-{size}"):
            mlflow.set_tags({"hyrax.benchmark": name, "hyrax.benchmark.size": size})
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            metrics = _flatten({"results": results, "ratio": ratios, "met": met or {}})
            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
            mlflow.log_artifact(str(out))
    finally:
        mlflow.set_tracking_uri(previous)
    print(json.dumps({"ratios": ratios, "met": met or {}}, indent=2))
    print(f"[bench] {out.relative_to(REPO)} (also in MLflow experiment '{EXPERIMENT}')")
    return out


def register_tiled_xdf(n: int) -> str:
    """A source of `n` stamps for runs larger than the XDF's 1,408 galaxies: the real stamps
    under their 8 rotations/flips, then shifted by whole pixels. Registered the way a user
    registers a source; returns its name."""
    import numpy as np

    from hyrax_mlops.data.dataset import DatasetWriter
    from hyrax_mlops.sources import SOURCES
    from hyrax_mlops.sources.xdf import fetch_xdf

    name = f"bench_xdf_{n}"
    if name in SOURCES.names():
        return name

    @SOURCES.register(name)
    def tiled(cfg, out_dir: Path, ctx=None) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            base_cfg = cfg.model_copy(update={"limit": 0})
            fetch_xdf(base_cfg, Path(tmp) / "xdf")
            from hyrax_mlops.data.dataset import Dataset

            base = Dataset(Path(tmp) / "xdf")
            stamps = base.images(np.arange(len(base)))
        writer = DatasetWriter(out_dir, stamps.shape[1:], base.bands, cfg.shard_size)
        for i in range(n):
            k, variant = i % len(stamps), i // len(stamps)
            s = np.rot90(stamps[k], variant % 4, axes=(1, 2))
            if variant % 8 >= 4:
                s = s[:, :, ::-1]
            s = np.roll(s, variant // 8, axis=2)
            writer.add({"object_id": f"T{i:07d}", "flux": float(s.sum())}, np.ascontiguousarray(s))
        return writer.close({"name": name, "from": "xdf", "copies": "rot90/flip/roll"}, n)

    return name


def arguments(doc: str, sizes: dict[str, Any]):
    """The command line every benchmark shares: `--size` picks one of `sizes`."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--size", choices=sizes, default="small",
                    help="small (make bench), large (survey scale) or, where a benchmark has "
                         "it, huge (10M rows, on request)")
    return ap
