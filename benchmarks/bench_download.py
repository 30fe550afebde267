"""Benchmark survey downloads over a flaky network: cutouts/s and cutouts lost when 10% of
requests fail (500s, connection resets, truncated bodies, 429 with Retry-After, corrupt
FITS), beside the same download from the same server with no faults.

The server is the bundled local Rubin stand-in (`tests/survey_servers.py`: ObsCore TAP ->
DataLink -> SODA, real HST pixels), run as its own process with 20 ms added to every answer
to stand for a remote service; the download is a real `download` stage run.

    .venv/bin/python benchmarks/bench_download.py [--size small|large]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, arguments, report, scratch  # noqa: E402

SIZES = {"small": 1_000, "large": 10_000}  # objects; two bands each: 2,000 / 20,000 cutouts
BANDS = ["g", "i"]
STAMP = 32
LATENCY_S = 0.02
FAULT_RATE = 0.10
CONCURRENCY = 16


def positions(n: int, seed: int = 0) -> list[tuple[str, float, float]]:
    """`n` positions spread over the real images, far enough from the edges for a stamp."""
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    images = []
    for path in sorted((REPO / "tests/data/sky").glob("*.fits")):
        header = fits.getheader(path)
        images.append((WCS(header), header["NAXIS1"], header["NAXIS2"]))
    areas = np.array([w * h for _, w, h in images], float)
    picks = rng.choice(len(images), size=n, p=areas / areas.sum())
    margin = STAMP // 2 + 4
    out = []
    for i, k in enumerate(picks):
        wcs, w, h = images[k]
        x, y = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
        sky = wcs.pixel_to_world(x, y)
        out.append((f"B{i:06d}", float(sky.ra.deg), float(sky.dec.deg)))
    return out


def start_server(fault_rate: float) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/survey_servers.py"), "rubin",
                             "--fault-rate", str(fault_rate), "--latency", str(LATENCY_S)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def one_download(catalog: Path, fault_rate: float) -> dict:
    """A whole download run against a fresh server process; its figures."""
    import mlflow

    import hyrax_mlops as hm

    proc, info = start_server(fault_rate)
    try:
        os.environ.update(info["env"])
        over = {**info["config"], "download.catalog": str(catalog), "download.bands": BANDS,
                "download.stamp_size": STAMP, "download.pixel_scale": info["pixel_scale"],
                "download.concurrency": CONCURRENCY, "download.backoff_s": 0.2,
                "download.retries": 8, "tracking.experiment": f"bench-{fault_rate}"}
        start = time.perf_counter()
        run = hm.download(None, over, force=True)
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    counts = json.loads(err.strip().splitlines()[-1])
    manifest = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="dataset/manifest.json")).read_text())
    metrics = mlflow.get_run(run.run_id).data.metrics
    fetch_s = manifest["source"]["fetch_seconds"]
    n_cutouts = manifest["counts"]["ingested"] * len(BANDS)
    return {"wall_s": round(wall, 2), "fetch_s": fetch_s,
            "cutouts": n_cutouts, "cutouts_per_s": round(n_cutouts / fetch_s, 1),
            "objects_lost": manifest["counts"]["failed"],
            "server_requests": counts["requests"],
            "retries": int(sum(v for k, v in metrics.items() if k.endswith(".retries")))}


def main() -> None:
    args = arguments(__doc__, SIZES).parse_args()
    n = SIZES[args.size]
    with scratch("download") as work:
        import pandas as pd

        catalog = work / "catalog.csv"
        pd.DataFrame(positions(n), columns=["object_id", "ra", "dec"]).to_csv(catalog,
                                                                              index=False)
        clean = one_download(catalog, 0.0)
        print("[bench] no faults:", clean, flush=True)
        faulty = one_download(catalog, FAULT_RATE)
        print("[bench] 10% faults:", faulty, flush=True)
    ratio = faulty["cutouts_per_s"] / clean["cutouts_per_s"]
    report(
        "download", args.size,
        params={"objects": n, "bands": BANDS, "cutouts": n * len(BANDS), "stamp": STAMP,
                "server": "tests/survey_servers.py rubin (TAP -> DataLink -> SODA)",
                "latency_s": LATENCY_S, "fault_rate": FAULT_RATE,
                "faults": "500, reset, truncated, 429 (Retry-After 0.05), corrupt",
                "concurrency": CONCURRENCY},
        results={"no_faults": clean, "faults_10pct": faulty},
        ratios={"throughput_faults_vs_clean": round(ratio, 3)},
        goals={"lost": "no cutout lost", "throughput": ">= 0.8x of the no-fault download"},
        met={"lost": faulty["objects_lost"] == 0 and clean["objects_lost"] == 0,
             "throughput": ratio >= 0.8},
    )


if __name__ == "__main__":
    main()
