"""Benchmark the demo pipeline as a user runs it, each step a fresh `hyrax-mlops` process:
end to end on an empty store, the same again with every stage cached, a cold `reduce --force`
with numba's compile cache empty and with ours filled, and `import hyrax_mlops` and
`hyrax-mlops --help`. The reference for the end-to-end run is the sum of the same stages'
own work (their runs' durations), so the ratio shows what orchestration costs.

    .venv/bin/python benchmarks/bench_pipeline.py [--size small|large]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, report, scratch  # noqa: E402

SIZES = {"small": {"download.limit": 300, "train.epochs": 3}, "large": {}}
BIN = Path(sys.executable).parent


def timed_cli(*args: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "hyrax-mlops"), *args], capture_output=True, text=True,
                          env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"hyrax-mlops {' '.join(args)}: {done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = arguments(__doc__, SIZES)
    args = ap.parse_args()
    sets = [x for k, v in SIZES[args.size].items() for x in ("--set", f"{k}={v}")]
    results = {}
    with scratch("pipeline") as work, tempfile.TemporaryDirectory() as numba_empty:
        import mlflow

        env = dict(os.environ)
        results["import_s"] = min(
            _time_py("import hyrax_mlops") for _ in range(3))
        results["help_s"] = min(timed_cli("--help") for _ in range(3))
        results["pipeline_s"] = timed_cli("pipeline", *sets)  # our numba cache as it is
        runs = mlflow.search_runs(experiment_names=["hyrax"])
        stages = runs[runs["tags.hyrax.stage"] != "pipeline"]
        results["stages_own_s"] = float(
            (stages["end_time"] - stages["start_time"]).dt.total_seconds().sum())
        results["cached_pipeline_s"] = timed_cli("pipeline", *sets)
        infer = stages[stages["tags.hyrax.stage"] == "infer"]["run_id"].iloc[0]
        results["cold_reduce_s"] = timed_cli("reduce", "--embeddings", infer, "--force", *sets)
        cold_env = dict(env, NUMBA_CACHE_DIR=numba_empty)
        results["cold_reduce_empty_numba_cache_s"] = timed_cli(
            "reduce", "--embeddings", infer, "--force", *sets, env=cold_env)
        del work
    ratios = {"stages_own_over_pipeline": results["stages_own_s"] / results["pipeline_s"],
              "cold_reduce_empty_cache_over_cached": results["cold_reduce_empty_numba_cache_s"]
              / results["cold_reduce_s"]}
    met = {"import_under_1.5s": results["import_s"] < 1.5,
           "help_under_1.5s": results["help_s"] < 1.5,
           "cached_pipeline_under_30s": results["cached_pipeline_s"] < 30,
           "cold_reduce_under_30s": results["cold_reduce_s"] < 30}
    report("pipeline", args.size, {"overrides": SIZES[args.size] or "defaults (make demo)"},
           results, ratios,
           goals={"import": "< 1.5 s", "help": "< 1.5 s", "cached pipeline": "< 30 s",
                  "cold reduce": "< 30 s"}, met=met)


def _time_py(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
