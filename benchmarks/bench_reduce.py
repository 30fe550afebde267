"""Benchmark UMAP and t-SNE in `reduce`: time and peak memory at 10k, 100k and 1M points (fit
on a sample of at most `reduce.umap_fit_sample` / `tsne_fit_sample`, the rest placed by
`transform`), each in a fresh process; and the cold-process cost on the demo-sized set with
numba's compile cache empty (what plain umap-learn pays in every new process) against the same
with our persistent cache.

The references are plain umap-learn `fit_transform` and plain openTSNE `fit` on all points,
run where they fit in the time budget (`--reference-max`, `--tsne-reference-max`, 100k).

    .venv/bin/python benchmarks/bench_reduce.py [--size small|large|huge]

`--size huge` is UMAP on 10,000,000 points (about 30 minutes on 2 cores; on request).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, peak_rss_gb, report  # noqa: E402

SIZES = {"small": [10_000], "large": [10_000, 100_000, 1_000_000], "huge": [10_000_000]}
TSNE_MAX = 1_000_000  # t-SNE's transform is not run at 10M (the issue asks UMAP there)


def points(n: int, dim: int = 64, seed: int = 0):
    """n float32 points from 200 clusters, made a million at a time so that ten million cost
    only their own 2.5 GB (the same draws as one piece up to a million)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, 16)).astype(np.float32)
    a = rng.normal(size=(16, dim)).astype(np.float32) / 4
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 1_000_000):
        m = min(1_000_000, n - s)
        z = centres[rng.integers(0, 200, m)] + 0.3 * rng.normal(size=(m, 16)).astype(
            np.float32)
        out[s:s + m] = np.tanh(z @ a) + 0.02 * rng.normal(size=(m, dim)).astype(np.float32)
    return out


def cell(kind: str, n: int) -> dict:
    """One run in this fresh process: 'hyrax' (the registered reducer) or 'plain' umap-learn."""
    x = points(n)
    start = time.perf_counter()
    if kind in ("hyrax", "hyrax-tsne"):
        from hyrax_mlops.analysis.reducers import REDUCERS
        from hyrax_mlops.config import load_config

        method = "umap" if kind == "hyrax" else "tsne"
        y = REDUCERS.get(method)(x, 2, load_config(None, {}).reduce)
    elif kind == "plain-tsne":  # openTSNE on every point, as its README shows
        from openTSNE import TSNE

        y = TSNE(n_components=2, metric="cosine", random_state=42, n_jobs=1,
                 verbose=False).fit(x)
    else:
        import umap

        y = umap.UMAP(n_components=2, metric="cosine", random_state=42, n_jobs=1
                      ).fit_transform(x)
    return {"seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb(),
            "shape": list(y.shape)}


def run_cell(kind: str, n: int, numba_cache: str | None = None) -> dict:
    env = dict(os.environ)
    if numba_cache:
        env["NUMBA_CACHE_DIR"] = numba_cache
    done = subprocess.run([sys.executable, __file__, "--cell", kind, str(n)], env=env,
                          capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = arguments(__doc__, SIZES)
    ap.add_argument("--reference-max", type=int, default=100_000)
    ap.add_argument("--tsne-reference-max", type=int, default=100_000)
    ap.add_argument("--cell", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        print(json.dumps(cell(args.cell[0], int(args.cell[1]))))
        return
    results, ratios = {}, {}
    # Cold processes on the demo size (1,408 objects, as `make demo`): an empty compile cache
    # for plain umap-learn and for hyrax, then hyrax again with the cache it just wrote.
    with tempfile.TemporaryDirectory() as plain_cache, \
            tempfile.TemporaryDirectory() as hyrax_cache:
        results["cold_demo_plain_umap"] = run_cell("plain", 1408, plain_cache)
        results["cold_demo_plain_umap_2nd_process"] = run_cell("plain", 1408, plain_cache)
        results["cold_demo_hyrax_first_ever"] = run_cell("hyrax", 1408, hyrax_cache)
        results["cold_demo_hyrax"] = run_cell("hyrax", 1408, hyrax_cache)
        print(json.dumps(results, indent=1), flush=True)
        ratios["cold_demo_plain_over_hyrax"] = (
            results["cold_demo_plain_umap_2nd_process"]["seconds"]
            / results["cold_demo_hyrax"]["seconds"])
        for n in SIZES[args.size]:
            results[f"hyrax_{n}"] = run_cell("hyrax", n, hyrax_cache)
            if n <= args.reference_max:
                results[f"plain_{n}"] = run_cell("plain", n, plain_cache)
                ratios[f"plain_over_hyrax_{n}"] = (results[f"plain_{n}"]["seconds"]
                                                   / results[f"hyrax_{n}"]["seconds"])
            print(f"[bench] {n}: {json.dumps(results[f'hyrax_{n}'])}", flush=True)
        # t-SNE (reduce.methods = ["tsne"]): fitted on at most tsne_fit_sample points, the
        # rest placed by transform; plain openTSNE fits every point
        for n in (n for n in SIZES[args.size] if n <= TSNE_MAX):
            results[f"tsne_hyrax_{n}"] = run_cell("hyrax-tsne", n)
            if n <= args.tsne_reference_max:
                results[f"tsne_plain_{n}"] = run_cell("plain-tsne", n)
                ratios[f"tsne_plain_over_hyrax_{n}"] = (results[f"tsne_plain_{n}"]["seconds"]
                                                        / results[f"tsne_hyrax_{n}"]["seconds"])
            print(f"[bench] t-SNE {n}: {json.dumps(results[f'tsne_hyrax_{n}'])}", flush=True)
    met = {"cold_demo_under_30s": results["cold_demo_hyrax"]["seconds"] < 30}
    big = results.get("hyrax_1000000")
    if big:
        met["1M_under_15min_8GB"] = big["seconds"] < 900 and big["peak_rss_gb"] < 8
    huge = results.get("hyrax_10000000")
    if huge:
        met["10M_under_60min_12GB"] = huge["seconds"] < 3600 and huge["peak_rss_gb"] < 12
    from hyrax_mlops.config import load_config

    r = load_config(None, {}).reduce
    report("reduce", args.size,
           {"sizes": SIZES[args.size], "dim": 64, "umap_fit_sample": r.umap_fit_sample,
            "umap_batch": r.umap_batch, "tsne_fit_sample": r.tsne_fit_sample,
            "tsne_batch": r.tsne_batch, "metric": "cosine", "n_jobs": 1},
           results, ratios,
           goals={"cold_demo": "< 30 s in a fresh process", "1M": "< 15 min and < 8 GB",
                  "10M": "< 60 min and < 12 GB"},
           met=met)


if __name__ == "__main__":
    main()
