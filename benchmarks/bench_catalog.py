"""Benchmark a catalogue through the stages as a user runs them: `ingest` (a catalog-only
dataset), `train` (tabular_classifier, one epoch), `infer`, `index` (LanceDB), each in a fresh
process, with its time and peak memory beside the bytes of data it must hold (the catalogue
in pandas, the embeddings), reported as the ratio peak / data.

The catalogue is made like a survey's object table: 64-bit integer ids as text (the first
five zero-padded, "00000"…), ra, dec, five magnitudes and a class from a colour cut; the
model's 64-d embeddings of five magnitudes are as dense as real catalogue embeddings, which is
what the index's recall is measured on (`recall_at_10`; `recall_at_10_ids_only` beside it:
matching the exact ten's ids, which ties at float32's resolution make meaningless).

    .venv/bin/python benchmarks/bench_catalog.py [--size small|large|huge]

small: 100k objects, large: 1M, huge: 10M (about 15 minutes on 2 cores; on request).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, in_subprocess, peak_rss_gb, report, scratch  # noqa: E402

SIZES = {"small": 100_000, "large": 1_000_000, "huge": 10_000_000}
FEATURES = ["mag_g", "mag_r", "mag_i", "mag_z", "mag_y"]
OVERRIDES = {"tracking.experiment": "bench-catalog", "data.features": FEATURES,
             "data.label_column": "kind", "train.epochs": 1, "index.backend": "lancedb",
             "model": {"name": "tabular_classifier", "hidden": [128, 64]}}


def make_catalog(n: int, path: Path) -> dict:
    """The catalogue, written a million rows at a time (one Parquet row group each)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    writer = None
    for s in range(0, n, 1_000_000):
        m = min(1_000_000, n - s)
        ids = (36411448540270970 + np.arange(s, s + m)).astype(str)
        if s == 0:
            ids[:5] = [f"{i:05d}" for i in range(5)]
        mags = rng.normal(22, 1.5, (m, 5)).astype(np.float32)
        columns = {"object_id": pa.array(ids), "ra": rng.uniform(0, 360, m),
                   "dec": rng.uniform(-60, 0, m), **dict(zip(FEATURES, mags.T, strict=True)),
                   "kind": np.where(mags[:, 0] - mags[:, 2] > 0, "red", "blue")}
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    import pandas as pd

    in_pandas = pd.read_parquet(path).memory_usage(deep=True).sum()
    return {"file_gb": path.stat().st_size / 2**30, "in_pandas_gb": in_pandas / 2**30}


def cell(stage: str, n: int, given: str) -> dict:
    """One stage in this fresh process; `given` is its input run (or the catalogue's path)."""
    import hyrax_mlops as hm

    over = {**OVERRIDES, "ingest.catalog": given} if stage == "ingest" else OVERRIDES
    kwargs = {"train": {"dataset": given}, "infer": {"train_run": given},
              "index": {"embeddings": given}}.get(stage, {})
    start = time.perf_counter()
    run = getattr(hm, stage)(None, over, **kwargs)
    out = {"seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb(),
           "run_id": run.run_id}
    import mlflow

    metrics = mlflow.get_run(run.run_id).data.metrics
    if stage == "index":
        from hyrax_mlops.stages.index import TAG_LOCATION

        table = Path(json.loads(mlflow.get_run(run.run_id).data.tags[TAG_LOCATION])["uri"])
        out["disk_gb"] = sum(f.stat().st_size for f in table.rglob("*") if f.is_file()) / 2**30
        out["recall_at_10"] = metrics["recall_at_10"]
        out["recall_at_10_ids_only"] = ids_only_recall(run.run_id)
    if stage == "train":
        out["test_accuracy"] = metrics.get("test_accuracy")
    return out


def ids_only_recall(index_run_id: str) -> float:
    """The index's answers for the stage's own 200 queries matched by id against the exact
    ten (what recall was before it compared distances)."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.stages.index import _RECALL_QUERIES, TAG_COLLECTION, TAG_LOCATION
    from hyrax_mlops.stages.infer import read_embeddings
    from hyrax_mlops.vectors import VECTOR_BACKENDS
    from hyrax_mlops.vectors.exact import exact_knn

    tags = MlflowClient().get_run(index_run_id).data.tags
    ids, vectors = read_embeddings(tags["hyrax.input.embeddings"])
    index = VECTOR_BACKENDS.get("lancedb").reopen(json.loads(tags[TAG_LOCATION]),
                                                  tags[TAG_COLLECTION])
    queries = np.random.default_rng(0).choice(len(ids), _RECALL_QUERIES, replace=False)
    truth, _ = exact_knn(vectors, vectors[queries], 10, "cosine")
    found = index.query(vectors[queries], 10)
    return sum(len(set(ids[t]) & {i for i, _ in f}) for t, f in zip(truth, found, strict=True)
               ) / (10 * len(queries))


def main() -> None:
    ap = arguments(__doc__, SIZES)
    ap.add_argument("--cell", nargs=3, metavar=("STAGE", "N", "GIVEN"), help="(internal)")
    args = ap.parse_args()
    if args.cell:
        stage, n, given = args.cell
        out = (make_catalog(int(n), Path(given)) if stage == "catalog"
               else cell(stage, int(n), given))
        print(json.dumps(out))
        return
    n = SIZES[args.size]
    results = {}
    with scratch("catalog") as work:
        path = work / "catalog.parquet"
        results["catalog"] = in_subprocess(Path(__file__), "--cell", "catalog", str(n), str(path))
        given = str(path)
        for stage in ("ingest", "train", "infer", "index"):
            print(f"[bench] {stage} {n:,} ...", flush=True)
            results[stage] = in_subprocess(Path(__file__), "--cell", stage, str(n), given)
            given = results[stage].pop("run_id")
            print(f"[bench] {stage}: {json.dumps(results[stage])}", flush=True)
    # the data each stage must hold: the catalogue in pandas, and the embeddings
    catalogue_gb, embeddings_gb = results["catalog"]["in_pandas_gb"], n * 64 * 4 / 2**30
    data = {"ingest": catalogue_gb, "train": catalogue_gb, "infer": catalogue_gb + embeddings_gb,
            "index": catalogue_gb + embeddings_gb}
    ratios = {f"{s}_peak_vs_data": results[s]["peak_rss_gb"] / gb for s, gb in data.items()}
    report("catalog", args.size, {"objects": n, "features": FEATURES, "embedding_dim": 64,
                                  "data_gb": data},
           results, ratios, goals={"peak_rss_gb": "< 8 GB per stage",
                                   "recall_at_10": ">= 0.99"},
           met={"peak_rss_gb": all(results[s]["peak_rss_gb"] < 8 for s in data),
                "recall_at_10": results["index"]["recall_at_10"] >= 0.99})


if __name__ == "__main__":
    main()
