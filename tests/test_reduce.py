"""UMAP at scale: fitted on a recorded sample, the rest placed by transform; and its numba
kernels compiled once per machine, into a cache of ours."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd

import hyrax_mlops as hm
from hyrax_mlops.analysis.numba_cache import default_cache_dir
from hyrax_mlops.tracking import ArtifactCache


def test_umap_fits_on_a_sample_and_places_every_other_object(demo_store):
    result, cfg = demo_store
    run = hm.reduce(cfg, {"reduce.methods": ["umap"], "reduce.dims": [2],
                          "reduce.umap_fit_sample": 120, "reduce.umap_batch": 50},
                    embeddings=result["infer"].run_id)
    data = mlflow.get_run(run.run_id).data
    assert data.params["reduce.umap_fit_sample"] == "120"
    assert data.metrics["umap_2d_fit_sample"] == 120
    table = pd.read_parquet(ArtifactCache.of(cfg).fetch(run.run_id, "reductions/umap_2d.parquet"))
    assert len(table) == 300 and table["object_id"].is_unique
    xy = table[["x", "y"]].to_numpy()
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0
    full = mlflow.get_run(result["reduce"].run_id).data.metrics
    assert full["umap_2d_fit_sample"] == 300  # below the sample size every object is fitted


def test_umap_kernels_are_cached_on_disk_after_a_reduce(demo_store):
    # the session's demo pipeline ran UMAP: its kernels must now be in our cache directory
    root = os.environ.get("NUMBA_CACHE_DIR") or str(default_cache_dir())
    cached = {p.name.split(".")[0] for p in __import__("pathlib").Path(root).rglob("*.nbi")}
    assert {"layouts", "umap_"} <= cached, sorted(cached)[:20]
