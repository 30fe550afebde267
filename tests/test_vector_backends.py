"""Every vector backend keeps the same contract, checked against exact numpy search; and the
index stage and search work the same whichever backend holds the vectors."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

import hyrax_mlops as hm
from hyrax_mlops.config import IndexConfig
from hyrax_mlops.vectors import VECTOR_BACKENDS
from hyrax_mlops.vectors.exact import exact_knn

BACKENDS = ["chroma", "lancedb"]


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    return (centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_upserts_without_duplicates_and_finds_the_exact_neighbours(backend, tmp_path):
    cls = VECTOR_BACKENDS.get(backend)
    cfg = IndexConfig(backend=backend, path=str(tmp_path / backend), ivf_min_rows=3000)
    x = clustered(4000, 16)
    ids = [f"OBJ{i:05d}" for i in range(len(x))]
    meta = [{"flux": float(i), "band": "g" if i % 2 else "r", "z": np.nan} for i in range(len(x))]
    index = cls.open(cfg, "contract", create=True)
    index.upsert(ids[:2500], x[:2500], meta[:2500])
    index.upsert(ids[2000:], x[2000:], meta[2000:])  # 500 ids again, 1500 new: above ivf_min_rows
    assert index.count() == len(x)

    queries = np.arange(0, 4000, 97)
    found = index.query(x[queries], k=10)
    truth, truth_dist = exact_knn(x, x[queries], 10, "cosine")
    hits = sum(len({ids[t] for t in tr} & {i for i, _ in f}) for tr, f in zip(truth, found,
                                                                           strict=True))
    assert hits / (10 * len(queries)) >= 0.9
    for q, f, td in zip(queries, found, truth_dist, strict=True):
        assert f[0][0] == ids[q]  # itself first, at distance ~0
        dists = [d for _, d in f]
        assert dists == sorted(dists)
        assert dists[0] == pytest.approx(td[0], abs=1e-4)

    got = index.get_vectors([ids[7], ids[3999], ids[0]])
    np.testing.assert_allclose(got, x[[7, 3999, 0]], rtol=1e-6)
    with pytest.raises(KeyError, match="NOPE"):
        index.get_vectors([ids[1], "NOPE"])

    location = index.location()
    assert location["backend"] == backend
    again = cls.reopen(json.loads(json.dumps(location)), "contract")
    assert again.count() == len(x)
    assert again.query(x[[5]], k=1)[0][0][0] == ids[5]
    assert cls.exists(location, "contract") == len(x)
    assert cls.exists(location, "no-such-collection") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_index_stage_and_search_on_each_backend(backend, demo_store, tmp_path):
    result, cfg = demo_store
    over = {"index.backend": backend, "index.path": str(tmp_path / backend)}
    run = hm.index(cfg, over, embeddings=result["infer"].run_id)
    assert not run.reused
    data = mlflow.get_run(run.run_id).data
    assert json.loads(data.tags["hyrax.index.location"])["backend"] == backend
    assert data.metrics["n_vectors"] == 300 and data.metrics["recall_at_10"] >= 0.95
    hits = hm.search_by_id(run.run_id, "XDF00010", k=5)
    assert hits["object_id"].iloc[0] == "XDF00010" and len(hits) == 5
    assert hm.index(cfg, over, embeddings=result["infer"].run_id).reused


def test_exact_knn_matches_a_direct_computation():
    x, q = clustered(500, 8, seed=1), clustered(7, 8, seed=2)
    for metric in ("cosine", "l2", "ip"):
        idx, dist = exact_knn(x, q, 5, metric, chunk=64)
        if metric == "cosine":
            xn = x / np.linalg.norm(x, axis=1, keepdims=True)
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            full = 1 - qn @ xn.T
        elif metric == "l2":
            full = ((q[:, None] - x[None]) ** 2).sum(-1)
        else:
            full = 1 - q @ x.T
        expect = np.argsort(full, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(idx, expect)
        np.testing.assert_allclose(dist, np.take_along_axis(full, expect, 1), rtol=1e-4,
                                   atol=1e-4)


def test_lancedb_takes_a_large_upsert_in_chunks_with_gaps_in_the_metadata(tmp_path):
    from hyrax_mlops.vectors import lance

    cls = VECTOR_BACKENDS.get("lancedb")
    cfg = IndexConfig(backend="lancedb", path=str(tmp_path / "lance"), ivf_min_rows=10**9)
    x = clustered(250, 8)
    ids = [f"ID{i}" for i in range(len(x))]
    # the second chunk's "z" is entirely missing: it arrives typed null and must be cast
    meta = [{"flux": float(i), "z": 0.5 if i < 100 else np.nan} for i in range(len(x))]
    old = lance._CHUNK
    lance._CHUNK = 100
    try:
        index = cls.open(cfg, "chunks", create=True)
        index.upsert(ids, x, meta)
        index.upsert(ids[:150], x[:150], meta[:150])  # again, matched not duplicated
    finally:
        lance._CHUNK = old
    assert index.count() == 250
    table = index._table.to_arrow()
    assert table.column("z").null_count == 150 and table.schema.field("z").type == "double"
    np.testing.assert_allclose(index.get_vectors(["ID249"]), x[[249]])
