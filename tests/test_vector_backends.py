"""Every vector backend keeps the same contract, checked against exact numpy search; and the
index stage and search work the same whichever backend holds the vectors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import hyrax_mlops as hm
from hyrax_mlops.config import IndexConfig
from hyrax_mlops.vectors import VECTOR_BACKENDS
from hyrax_mlops.vectors.exact import exact_knn

BACKENDS = ["chroma", "lancedb", "qdrant"]


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    return (centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize(("backend", "own"), [
    ("chroma", {}), ("qdrant", {}),
    # an IVF index above 3000 rows: IVF-Flat (the default) or IVF-PQ
    ("lancedb", {"ivf_min_rows": 3000}),
    ("lancedb", {"ivf_min_rows": 3000, "index_type": "ivf_pq"})], ids=str)
def test_a_backend_upserts_without_duplicates_and_finds_the_exact_neighbours(backend, own,
                                                                             tmp_path):
    cls = VECTOR_BACKENDS.get(backend)
    cfg = IndexConfig(backend=backend, path=str(tmp_path / backend), **own)
    x = clustered(4000, 16)
    ids = [f"OBJ{i:05d}" for i in range(len(x))]
    meta = [{"flux": float(i), "band": "g" if i % 2 else "r", "z": np.nan} for i in range(len(x))]
    index = cls.open(cfg, "contract", create=True)
    index.upsert(ids[:2500], x[:2500], meta[:2500])
    index.upsert(ids[2000:], x[2000:], meta[2000:])  # 500 ids again, 1500 new: above ivf_min_rows
    assert index.count() == len(x)
    if backend == "lancedb":  # the index type asked for was built
        assert index._vector_index == {"ivf_flat": "IvfFlat", "ivf_pq": "IvfPq"}[cfg.index_type]

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
    # k = 1 from the reopened index: each query's own row (PQ alone misses some at k = 1)
    nearest = again.query(x[queries], k=1)
    assert [f[0][0] for f in nearest] == [ids[q] for q in queries]
    assert cls.exists(location, "contract") == len(x)
    assert cls.exists(location, "no-such-collection") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_index_stage_and_search_on_each_backend(backend, demo_sandbox, tmp_path):
    result, cfg = demo_sandbox
    over = {"index.backend": backend, "index.path": str(tmp_path / backend)}
    run = hm.index(cfg, over, embeddings=result["infer"].run_id)
    assert not run.reused
    data = mlflow.get_run(run.run_id).data
    assert json.loads(data.tags["hyrax.index.location"])["backend"] == backend
    assert data.metrics["n_vectors"] == 300 and data.metrics["recall_at_10"] >= 0.95
    hits = hm.search_by_id(run.run_id, "XDF00010", k=5)
    assert hits["object_id"].iloc[0] == "XDF00010" and len(hits) == 5
    assert hm.index(cfg, over, embeddings=result["infer"].run_id).reused


@pytest.mark.parametrize("entries", [1 << 24, 700])
def test_exact_knn_matches_a_direct_computation(monkeypatch, entries):
    """Also with the vectors read in blocks of 100 rows (700 distances at a time), as ten
    million are: the running k best merged block by block give the same answer."""
    from hyrax_mlops.vectors import exact

    monkeypatch.setattr(exact, "_ENTRIES", entries)
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


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_recall_counts_an_answer_as_near_as_the_kth_and_not_one_farther(metric):
    """Sixty rows equally near the query: an index may return any ten of them and be right
    (matching the exact ten's ids alone scored the last ten 0 instead of 1), and one farther
    by less than float32 distances tell apart (3e-7 in cosine) is right too; rows farther
    (by 1e-5, or well beyond) are misses."""
    from hyrax_mlops.vectors.exact import recall_at_k

    dim = 96

    def at(angle: float, axis: int) -> np.ndarray:
        row = np.zeros(dim)
        row[0], row[axis] = np.cos(angle), np.sin(angle)
        return row

    x = np.array([at(0.1, j) for j in range(1, 61)]         # rows 0-59: tied
                 + [at(0.1 + 3e-6, 61), at(0.1 + 1e-4, 62)]  # rows 60, 61
                 + [at(0.3, j) for j in range(63, 83)]       # rows 62-81: far
                 ).astype(np.float32)
    q = at(0.0, 1)[None].astype(np.float32)
    ids = np.array([f"{i:03d}" for i in range(len(x))])
    assert recall_at_k(x, q, [list(range(10))], 10, metric) == 1.0
    assert recall_at_k(x, q, [list(range(50, 60))], 10, metric) == 1.0
    assert recall_at_k(x, q, [[60, *range(51, 60)]], 10, metric) == 1.0
    assert recall_at_k(x, q, [[61, *range(51, 60)]], 10, metric) == 0.9
    assert recall_at_k(x, q, [[*range(5), *range(62, 67)]], 10, metric) == 0.5
    assert recall_at_k(x, q, [[3, 3, 3, *range(62, 69)]], 10, metric) == 0.1  # once is once
    assert recall_at_k(x, q, [list(ids[50:60])], 10, metric, ids=ids) == 1.0
    assert recall_at_k(x, q, [list(ids[70:80])], 10, metric, ids=ids) == 0.0
    assert recall_at_k(x, q, [["NOPE", *ids[51:60]]], 10, metric, ids=ids) == 0.9


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
        # a new table: its first chunk, then the rest in one commit (not one per chunk)
        assert len(index._table.list_versions()) == 2
        assert index.query(x[[249]], 1)[0][0][0] == "ID249"
        index.upsert(ids[:150], x[:150], meta[:150])  # again, matched not duplicated
        index.upsert(["NEW"], -x[[7]], [{"flux": -1.0}])  # queries see rows added later
        assert index.query(-x[[7]], 1)[0][0][0] == "NEW"
    finally:
        lance._CHUNK = old
    assert index.count() == 251
    table = index._table.to_arrow()
    assert table.column("z").null_count == 151 and table.schema.field("z").type == "double"
    np.testing.assert_allclose(index.get_vectors(["ID249"]), x[[249]])


# ------------------------------------------------------------- identity and honest failures
def _runs_of(stage: str) -> list:
    from mlflow.tracking import MlflowClient

    exps = [e.experiment_id for e in mlflow.search_experiments()]
    return MlflowClient().search_runs(exps, f"tags.`hyrax.stage` = '{stage}'")


def test_other_index_settings_make_another_collection_with_honest_recall(demo_sandbox,
                                                                         tmp_path):
    """A cosine index then an l2 index of the same embeddings: two runs, two collections, and
    the l2 run measures and searches l2 (it once reused the cosine collection: recall 0.26)."""
    import chromadb

    from hyrax_mlops.stages.infer import read_embeddings

    result, cfg = demo_sandbox
    infer_id = result["infer"].run_id
    path = str(tmp_path / "chroma")
    cos = hm.index(cfg, {"index.path": path, "index.metric": "cosine"}, embeddings=infer_id)
    l2 = hm.index(cfg, {"index.path": path, "index.metric": "l2"}, embeddings=infer_id)
    assert not cos.reused and not l2.reused and cos.run_id != l2.run_id
    names = {r: mlflow.get_run(r).data.tags["hyrax.index.collection"]
             for r in (cos.run_id, l2.run_id)}
    assert names[cos.run_id] != names[l2.run_id]
    assert names[cos.run_id].startswith(f"hyrax-{infer_id}-chroma-cosine-")
    assert names[l2.run_id].startswith(f"hyrax-{infer_id}-chroma-l2-")
    client = chromadb.PersistentClient(path=path)
    assert set(names.values()) <= {c.name for c in client.list_collections()}
    for run_id, name in names.items():  # each collection was built with its own metric
        space = client.get_collection(name).configuration_json["hnsw"]["space"]
        assert space == mlflow.get_run(run_id).data.params["index.metric"]
    assert mlflow.get_run(l2.run_id).data.metrics["recall_at_10"] >= 0.9

    ids, vectors = read_embeddings(infer_id)
    row = int(np.flatnonzero(ids == "XDF00010")[0])
    hits = hm.search_by_id(l2.run_id, "XDF00010", k=5)
    truth, truth_d = exact_knn(vectors, vectors[[row]], 5, "l2")
    assert list(hits["object_id"]) == list(ids[truth[0]])
    np.testing.assert_allclose(hits["distance"], truth_d[0], rtol=1e-3, atol=1e-3)
    # the cosine run still answers in cosine distances (1 - cos), not l2
    cos_hits = hm.search_by_id(cos.run_id, "XDF00010", k=5)
    _, cos_d = exact_knn(vectors, vectors[[row]], 5, "cosine")
    np.testing.assert_allclose(cos_hits["distance"], cos_d[0], rtol=1e-3, atol=1e-3)
    # and asking again for either reuses its own run
    assert hm.index(cfg, {"index.path": path, "index.metric": "l2"},
                    embeddings=infer_id).run_id == l2.run_id


def test_collection_names_follow_content_settings_only():
    from hyrax_mlops.vectors import collection_name

    rid = "0123456789abcdef0123456789abcdef"
    base = collection_name(rid, IndexConfig())
    assert base.startswith(f"hyrax-{rid}-chroma-cosine-") and len(base) <= 512
    for key, value in (("metric", "ip"), ("ef_construction", 100), ("max_neighbors", 16),
                       ("ef_search", 50)):
        assert collection_name(rid, IndexConfig(**{key: value})) != base, key
    lance = IndexConfig(backend="lancedb")
    for key, value in (("ivf_partitions", 8), ("index_type", "ivf_pq"), ("ivf_min_rows", 10)):
        assert collection_name(rid, lance.model_copy(update={key: value})) != \
            collection_name(rid, lance), key
    for key, value in (("nprobes", 5), ("refine_factor", 2)):  # query-time: same table
        assert collection_name(rid, lance.model_copy(update={key: value})) == \
            collection_name(rid, lance), key
    pq = lance.model_copy(update={"index_type": "ivf_pq"})
    assert collection_name(rid, pq.model_copy(update={"pq_sub_vectors": 4})) != \
        collection_name(rid, pq)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_a_store_that_refuses_connections_is_an_error_not_gone():
    from hyrax_mlops.vectors import IndexUnreachable

    cls = VECTOR_BACKENDS.get("chroma")
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(IndexUnreachable, match=r"cannot reach the chroma index at "
                       rf"{url}.*Fix: check that the Chroma server") as err:
        cls.exists({"backend": "chroma", "url": url}, "hyrax-x")
    assert "not rebuilt" in str(err.value)


@pytest.fixture
def chroma_behind_token(tmp_path, monkeypatch):
    """`chroma run` behind the repo's token proxy, both on loopback; yields (proxy url,
    token, proxy process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from servers import _wait_port, chroma_server, free_port, stop

    token = "chroma-tok-9f3K-s3cret"
    token_file = tmp_path / "chroma.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, token.encode())
    os.close(fd)
    monkeypatch.setenv("CHROMA_TOKEN", token)
    proxy_script = Path(__file__).resolve().parents[1] / "infra" / "token_proxy.py"
    with chroma_server(tmp_path / "chroma") as upstream:
        port = free_port()
        proxy = subprocess.Popen([sys.executable, str(proxy_script), "--listen-port", str(port),
                                  "--upstream", upstream, "--token-file", str(token_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_port("127.0.0.1", port, proxy)
            yield url, token, proxy
        finally:
            stop(proxy)


def test_an_unreachable_index_is_an_error_a_deleted_one_is_rebuilt(demo_sandbox,
                                                                    chroma_behind_token,
                                                                    monkeypatch):
    import chromadb

    from hyrax_mlops.vectors import IndexUnreachable

    from servers import stop

    result, cfg = demo_sandbox
    url, token, proxy = chroma_behind_token
    infer_id = result["infer"].run_id
    over = {"index.url": url}
    first = hm.index(cfg, over, embeddings=infer_id)
    assert not first.reused
    name = mlflow.get_run(first.run_id).data.tags["hyrax.index.collection"]
    assert hm.index(cfg, over, embeddings=infer_id).run_id == first.run_id  # reachable: reused

    # deleted at the server: the backend says "not found", so the index is rebuilt
    port = int(url.rsplit(":", 1)[1])
    client = chromadb.HttpClient(host="127.0.0.1", port=port,
                                 headers={"Authorization": f"Bearer {token}"})
    client.delete_collection(name)
    rebuilt = hm.index(cfg, over, embeddings=infer_id)
    assert not rebuilt.reused and rebuilt.run_id != first.run_id
    assert client.get_collection(name).count() == 300
    n_runs = len(_runs_of("index"))

    # a token the server refuses (401): an error naming where and what to fix, no rebuild
    monkeypatch.setenv("CHROMA_TOKEN", "wrong-token-Xy7")
    with pytest.raises(IndexUnreachable, match=rf"chroma index at {url}.*CHROMA_TOKEN") as err:
        hm.index(cfg, over, embeddings=infer_id)
    assert "wrong-token-Xy7" not in str(err.value) and token not in str(err.value)
    with pytest.raises(IndexUnreachable):
        hm.search_by_id(rebuilt.run_id, "XDF00010", k=3)
    monkeypatch.setenv("CHROMA_TOKEN", token)

    # the server down (connection refused): the same
    stop(proxy)
    with pytest.raises(IndexUnreachable, match=rf"cannot reach the chroma index at {url}"):
        hm.index(cfg, over, embeddings=infer_id)
    assert len(_runs_of("index")) == n_runs  # nothing was rebuilt


def test_catalog_rows_reach_a_backend_a_chunk_at_a_time():
    """The index stage hands backends its catalog rows as a sequence made a slice at a time;
    the dicts are what `to_dict("records")` gives, ids as text."""
    from hyrax_mlops.vectors.base import FrameRecords

    frame = pd.DataFrame({"object_id": ["00042", "36411448540270969", "7"],
                          "flux": [1.5, np.nan, 3.0]})
    rows = FrameRecords(frame)
    assert len(rows) == 3 and rows
    part = rows[1:3]
    assert [r["object_id"] for r in part] == ["36411448540270969", "7"]
    assert np.isnan(part[0]["flux"]) and part[1]["flux"] == 3.0
    assert rows[0] == {"object_id": "00042", "flux": 1.5}


def test_catalog_rows_follow_the_embeddings_in_their_order_or_any_other(demo_store):
    """The index stage's metadata row i is the catalog row of embedding i: taken as it is
    when infer kept the catalog's order, looked up by id otherwise (reversed, or with
    objects missing as a streamed download's failures are)."""
    from hyrax_mlops.stages.index import _metadata
    from hyrax_mlops.stages.infer import read_embeddings

    result, cfg = demo_store
    ids, _ = read_embeddings(result["infer"].run_id)
    for order in (ids, ids[::-1], ids[5:], ids[[3, 1, 2]]):
        rows = _metadata(cfg, result["dataset"].run_id, order)
        assert [r["object_id"] for r in rows[:]] == order.tolist()


def test_lancedb_trains_an_index_on_repeated_vectors_without_printing_warnings(tmp_path):
    """IVF training on vectors that repeat (a dense catalogue's embeddings) made LanceDB
    print a warning per empty partition, hundreds of lines on a user's terminal; they stay
    off it, and a user who asks for them (LANCEDB_LOG=warn) still gets them."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from hyrax_mlops.config import IndexConfig\n"
        "from hyrax_mlops.vectors import VECTOR_BACKENDS\n"
        "x = np.repeat(np.random.default_rng(0).normal(size=(20, 8)), 150, axis=0)\n"
        "cfg = IndexConfig(backend='lancedb', path=sys.argv[1], ivf_min_rows=256)\n"
        "index = VECTOR_BACKENDS.get('lancedb').open(cfg, 'repeats', create=True)\n"
        "index.upsert([f'O{i}' for i in range(len(x))], x.astype(np.float32))\n"
        "index.prewarm()\n"
        "assert index.query(x[:3].astype(np.float32), 2)[0][0][1] < 1e-5\n"
        "print(index._vector_index)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LANCEDB_LOG", "LANCE_LOG")}
    runs = {}
    for level in (None, "warn"):
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"lance-{level}")],
                             env={**env, **({"LANCEDB_LOG": level} if level else {})},
                             capture_output=True, text=True, check=True)
        runs[level] = run
    assert runs[None].stdout.strip() == "IvfFlat"
    assert runs[None].stderr == ""
    assert "WARN" in runs["warn"].stderr and "empty" in runs["warn"].stderr


def test_lancedb_queries_from_inside_a_running_event_loop(tmp_path):
    """A notebook cell runs inside ipykernel's event loop: a LanceDB query made there gives
    the same answer as outside it (an asyncio-based query path could not run there)."""
    import asyncio

    cls = VECTOR_BACKENDS.get("lancedb")
    index = cls.open(IndexConfig(backend="lancedb", path=str(tmp_path / "lance")), "loop",
                     create=True)
    x = clustered(200, 8)
    index.upsert([f"{i:05d}" for i in range(len(x))], x)
    outside = index.query(x[[3, 42]], 3)

    async def cell():
        return index.query(x[[3, 42]], 3)

    inside = asyncio.run(cell())
    assert [[i for i, _ in hits] for hits in inside] == [[i for i, _ in hits] for hits in outside]
    assert inside[0][0][0] == "00003" and inside[1][0][0] == "00042"


def test_lancedb_keeps_searched_partitions_in_memory_up_to_index_cache_gb(tmp_path):
    """IVF-Flat partitions hold full vectors and stay cached as they are searched: a
    long-lived app over millions of them bounds that memory with index.index_cache_gb (the
    location every index run records carries it, so a reopened index keeps the bound)."""
    x = clustered(60_000, 32)
    ids = [str(i) for i in range(len(x))]
    cls = VECTOR_BACKENDS.get("lancedb")
    sizes = {}
    for gb in (0, 1 / 1024):  # LanceDB's default (6 GB), 1 MB
        cfg = IndexConfig(backend="lancedb", path=str(tmp_path / "lance"), index_cache_gb=gb)
        index = cls.open(cfg, "cache", create=True)
        if not index.count():
            index.upsert(ids, x)
        index = cls.reopen(json.loads(json.dumps(index.location())), "cache")
        assert index._vector_index == "IvfFlat"
        hits = index.query(x[:200], 5)
        assert [h[0][0] for h in hits] == ids[:200]
        sizes[gb] = index._open_reader()[0].session().index_cache_size_bytes()
    assert sizes[0] > 4 * 2**20 and sizes[1 / 1024] < 2 * 2**20, sizes


@pytest.mark.parametrize("in_a_loop", [False, True], ids=["script", "notebook"])
@pytest.mark.parametrize("ivf_min_rows", [300, 10**9], ids=["ivf_flat", "exhaustive"])
def test_lancedb_answers_many_queries_in_batches_as_it_answers_each(in_a_loop, ivf_min_rows,
                                                                    tmp_path, monkeypatch):
    """Query vectors go to LanceDB many per call; each still gets its own k nearest, in
    order, across batch boundaries (here 7 per call), as when asked one at a time: through
    an IVF-Flat index, and by the exhaustive scan a table below ivf_min_rows gets."""
    import asyncio

    from hyrax_mlops.vectors import lance

    index = VECTOR_BACKENDS.get("lancedb").open(
        IndexConfig(backend="lancedb", path=str(tmp_path / "lance"), ivf_min_rows=ivf_min_rows),
        "batches", create=True)
    x = clustered(600, 8)
    index.upsert([f"{i:05d}" for i in range(len(x))], x)
    assert index._vector_index == ("IvfFlat" if ivf_min_rows == 300 else None)
    rows = [5, 599, 0, 17, 300, 301, 5, 42, 43, 44, 45, 46, 47, 48, 49, 50]  # 16: 7 + 7 + 2
    monkeypatch.setattr(lance, "_QUERY_BATCH", 7)

    def ask(vectors):
        if not in_a_loop:
            return index.query(vectors, 4)

        async def cell():
            return index.query(vectors, 4)
        return asyncio.run(cell())

    many = ask(x[rows])
    each = [ask(x[[r]])[0] for r in rows]
    assert len(many) == len(rows)
    assert [[i for i, _ in h] for h in many] == [[i for i, _ in h] for h in each]
    for r, hits in zip(rows, many, strict=True):
        assert hits[0][0] == f"{r:05d}" and hits[0][1] == pytest.approx(0, abs=1e-5)
        assert [d for _, d in hits] == sorted(d for _, d in hits)


def test_lancedb_finds_ids_through_its_id_file_and_without_one(tmp_path):
    """A local table keeps its ids in row-id order beside it, one file for its current
    version: queries take the ids from there. Updated rows move to new row ids and must
    still come back under their own ids; a table changed by another writer (no file for its
    version) is queried the usual way and gives the same answers."""
    import lancedb

    cls = VECTOR_BACKENDS.get("lancedb")
    cfg = IndexConfig(backend="lancedb", path=str(tmp_path / "lance"), ivf_min_rows=300)
    index = cls.open(cfg, "ids", create=True)
    x = clustered(600, 8)
    ids = [f"{i:05d}" for i in range(len(x))]
    index.upsert(ids, x)
    folder = tmp_path / "lance" / "ids.ids"
    assert [p.name for p in folder.glob("v*.arrow")] == [f"v{index._table.version}.arrow"]
    first = index.query(x[[3, 42, 599]], 3)
    assert [h[0][0] for h in first] == ["00003", "00042", "00599"]
    assert index._open_reader()[1] is not None  # answered from the file

    # rows 0-99 get vectors next to rows 100-199's: their row ids change
    index.upsert(ids[:100], x[100:200] + 0.01)
    assert [p.name for p in folder.glob("v*.arrow")] == [f"v{index._table.version}.arrow"]
    hits = index.query(x[[150]], 2)[0]
    assert [i for i, _ in hits] == ["00150", "00050"] and hits[0][1] < 1e-5

    # the table made again under its name by something else (its versions count from 1
    # again), with a file left from the old table under the new table's version: not used
    saved = folder / f"v{index._table.version}.arrow"
    stale = saved.read_bytes()
    db = lancedb.connect(str(tmp_path / "lance"))
    db.drop_table("ids")
    remade = db.create_table("ids", data=[{"id": f"R{i}", "vector": x[i]} for i in range(600)])
    (folder / f"v{remade.version}.arrow").write_bytes(stale)
    reopened = cls.reopen(json.loads(json.dumps(index.location())), "ids")
    assert reopened._open_reader()[1] is None
    assert reopened.query(x[[42]], 1)[0][0][0] == "R42"
    db.drop_table("ids")
    index = cls.open(cfg, "ids", create=True)
    index.upsert(ids, x)
    index.upsert(ids[:100], x[100:200] + 0.01)

    # another writer adds a row: the reopened index has no file for that version
    lancedb.connect(str(tmp_path / "lance")).open_table("ids").add(
        [{"id": "00NEW", "vector": x[300] * 3}])
    other = cls.reopen(json.loads(json.dumps(index.location())), "ids")
    assert other._open_reader()[1] is None
    assert {i for i, _ in other.query(x[[300]], 2)[0]} == {"00300", "00NEW"}
    for mine, theirs in zip(index.query(x[200:260], 3), other.query(x[200:260], 3),
                            strict=True):
        assert [i for i, _ in mine] == [i for i, _ in theirs]
        assert [d for _, d in mine] == pytest.approx([d for _, d in theirs], abs=1e-5)


def test_lancedb_prewarm_reads_the_index_into_memory_when_it_fits(tmp_path):
    """`prewarm` (the app calls it when it opens an index) puts the IVF partitions in the
    query side's cache before any query, answers unchanged; an index larger than the cache
    bound (index.index_cache_gb) is not read, it would only evict itself."""
    x = clustered(60_000, 32)
    ids = [str(i) for i in range(len(x))]
    cls = VECTOR_BACKENDS.get("lancedb")
    cfg = IndexConfig(backend="lancedb", path=str(tmp_path / "lance"))
    built = cls.open(cfg, "warm", create=True)
    built.upsert(ids, x)
    expected = built.query(x[:20], 5)
    cached = {}
    for gb in (0, 1 / 1024):  # LanceDB's default (6 GB), 1 MB (the index is ~9 MB)
        location = {**built.location(), "index_cache_gb": gb}
        index = cls.reopen(json.loads(json.dumps(location)), "warm")
        index.prewarm()
        cached[gb] = index._open_reader()[0].session().index_cache_size_bytes()
        assert index.query(x[:20], 5) == expected
    assert cached[0] > 7 * 2**20 and cached[1 / 1024] < 2**20, cached


def test_lancedb_on_an_object_store(tmp_path, monkeypatch):
    """index.url = s3://bucket/prefix: written through LanceDB and queried through Lance on
    the same store (a local S3 server, moto, speaking the S3 protocol), reopened from the
    location an index run records; credentials come from the environment only."""
    import shutil
    import socket
    import subprocess
    import time

    import boto3

    server = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="hyrax")
        cls = VECTOR_BACKENDS.get("lancedb")
        index = cls.open(IndexConfig(backend="lancedb", url="s3://hyrax/lance", ivf_min_rows=300),
                         "remote", create=True)
        x = clustered(600, 8)
        index.upsert([f"{i:05d}" for i in range(len(x))], x)
        assert index._vector_index == "IvfFlat" and index.count() == 600
        location = json.loads(json.dumps(index.location()))
        assert "test" not in json.dumps(location)  # no credentials in what a run records
        again = cls.reopen(location, "remote")
        again.prewarm()
        assert [h[0][0] for h in again.query(x[[3, 42]], 3)] == ["00003", "00042"]
        assert np.allclose(again.get_vectors(["00007"])[0], x[7])
        objects = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
            Bucket="hyrax", Prefix="lance/remote.lance/")
        assert objects["KeyCount"] > 0  # the table is on the store, not on local disk
    finally:
        proc.terminate()
        proc.wait(timeout=10)
