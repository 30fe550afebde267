"""Qdrant's own promises beyond the shared contract (tests/test_vector_backends.py): object ids
stay the text they were, embedded folders are shared within a process and honest when deleted
or locked, and a server's API key never shows. No Qdrant server ships on PyPI or Debian, so
server mode is checked against a refused port, not a faked server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from hyrax_mlops.config import IndexConfig, load_config
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.vectors import VECTOR_BACKENDS, CollectionNotFound, IndexUnreachable
from hyrax_mlops.vectors.exact import exact_knn

pytest.importorskip("qdrant_client")

ODD_IDS = ["00042", "36411448540270969", "42", "18446744073709551617", "NGC 1300 / é"]


def _cls():
    return VECTOR_BACKENDS.get("qdrant")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_text_ids_round_trip_exactly(tmp_path):
    """'00042' is not '42', and a 64-bit id keeps every digit (no int or float on the way)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(len(ODD_IDS), 8)).astype(np.float32) * 5
    meta = [{"flux": np.float32(1.5), "n": np.int64(7), "ok": np.bool_(True), "z": np.nan,
             "mag": float("inf"), "note": None, "_hyrax_id": "spoof"} for _ in ODD_IDS]
    index = _cls().open(IndexConfig(backend="qdrant", path=str(tmp_path / "q")), "ids",
                        create=True)
    index.upsert(ODD_IDS, x, meta)
    assert index.count() == len(ODD_IDS)
    for row, hits in enumerate(index.query(x, k=len(ODD_IDS))):
        assert hits[0][0] == ODD_IDS[row] and isinstance(hits[0][0], str)
        assert {i for i, _ in hits} == set(ODD_IDS)
    order = ["36411448540270969", "00042", "42"]
    np.testing.assert_allclose(index.get_vectors(order), x[[1, 0, 2]], rtol=1e-6)
    with pytest.raises(KeyError, match="0042"):
        index.get_vectors(["0042"])

    from hyrax_mlops.vectors.qdrant import point_id

    point = index._client.retrieve("ids", [point_id("00042")], with_payload=True)[0]
    assert point.payload == {"flux": 1.5, "n": 7, "ok": True, "_hyrax_id": "00042",
                             "_hyrax_norm": pytest.approx(float(np.linalg.norm(x[0])))}
    assert type(point.payload["n"]) is int and type(point.payload["ok"]) is bool


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_l2_and_ip_distances_match_exact_search(metric, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    ids = [f"O{i}" for i in range(len(x))]
    index = _cls().open(IndexConfig(backend="qdrant", metric=metric, path=str(tmp_path / "q")),
                        metric, create=True)
    index.upsert(ids, x)
    truth, truth_d = exact_knn(x, x[:20], 5, metric)
    for hits, t, td in zip(index.query(x[:20], k=5), truth, truth_d, strict=True):
        assert [i for i, _ in hits] == [ids[j] for j in t]
        np.testing.assert_allclose([d for _, d in hits], td, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(index.get_vectors(["O5"]), x[[5]])  # stored as given
    again = _cls().reopen(json.loads(json.dumps(index.location())), metric)
    assert again.query(x[:1], k=1)[0][0][0] == ids[truth[0][0]]  # ip: not always itself


def test_upserts_go_in_batches_and_never_duplicate(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    ids = [f"B{i}" for i in range(50)]
    index = _cls().open(IndexConfig(backend="qdrant", path=str(tmp_path / "q"), upsert_batch=7),
                        "batches", create=True)
    calls = []
    upsert = index._client.upsert
    index._client.upsert = lambda *a, **kw: calls.append(len(kw["points"].ids)) or upsert(*a,
                                                                                           **kw)
    index.upsert(ids, x)
    index.upsert(ids[:20], x[:20] * 2)  # replaced, not added
    assert calls == [7] * 7 + [1] + [7, 7, 6]
    assert index.count() == 50
    np.testing.assert_allclose(index.get_vectors(["B3", "B30"]), [x[3] * 2, x[30]], rtol=1e-6)


def test_one_client_per_folder_and_a_deleted_folder_is_gone(tmp_path):
    import shutil

    cls, path = _cls(), tmp_path / "q"
    cfg = IndexConfig(backend="qdrant", path=str(path))
    first = cls.open(cfg, "a", create=True)
    first.upsert(["X"], np.ones((1, 3), np.float32))
    second = cls.open(cfg, "b", create=True)  # the same folder again: no lock error
    assert second._client is first._client
    location = first.location()
    assert cls.exists(location, "a") == 1
    assert cls.exists(location, "b") is None  # made at its first upsert (its size is unknown)
    second.upsert(["X"], np.ones((1, 3), np.float32))
    assert cls.exists(location, "b") == 1

    shutil.rmtree(path)  # under the cached client
    assert cls.exists(location, "a") is None
    with pytest.raises(CollectionNotFound, match="no Qdrant collection 'a'"):
        cls.reopen(location, "a")
    assert not path.exists()  # asking did not make an empty store
    fresh = cls.open(cfg, "a", create=True)  # a new store, not the stale client's memory
    assert fresh.count() == 0 and fresh._client is not first._client
    fresh.upsert(["Y"], np.ones((1, 3), np.float32))
    assert cls.exists(location, "a") == 1


def test_a_folder_another_process_holds_is_unreachable_not_gone(tmp_path):
    path = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from qdrant_client import QdrantClient; "
         f"c = QdrantClient(path={str(path)!r}); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexUnreachable, match=r"qdrant index at .*held.*one process at a "
                                                    r"time.*index.url"):
            _cls().exists({"backend": "qdrant", "path": str(path)}, "x")
    finally:
        holder.kill()
        holder.wait()


def test_embedded_commits_are_not_synced_one_by_one(tmp_path):
    """The WAL switch that makes a million points take minutes, not an hour: this fails if a
    qdrant-client release moves the embedded storage it reaches into."""
    index = _cls().open(IndexConfig(backend="qdrant", path=str(tmp_path / "q")), "wal",
                        create=True)
    index.upsert(["A"], np.ones((1, 3), np.float32))
    conn = index._client._client.collections["wal"].storage.storage
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_collection_names_follow_qdrant_content_settings_only():
    from hyrax_mlops.vectors import collection_name

    rid = "0123456789abcdef0123456789abcdef"
    base = IndexConfig(backend="qdrant")
    name = collection_name(rid, base)
    assert name.startswith(f"hyrax-{rid}-qdrant-cosine-")
    for key, value in (("hnsw_m", 32), ("hnsw_ef_construct", 64), ("on_disk", True),
                       ("metric", "l2")):
        assert collection_name(rid, base.model_copy(update={key: value})) != name, key
    for key, value in (("hnsw_ef", 16), ("upsert_batch", 100), ("timeout_s", 5)):
        assert collection_name(rid, base.model_copy(update={key: value})) == name, key


def test_a_refused_server_is_unreachable_and_the_api_key_never_shows(monkeypatch, tmp_path):
    key = "qdrant-key-Zq81-s3cret"
    monkeypatch.setenv("QDRANT_API_KEY", key)
    url = f"http://127.0.0.1:{_closed_port()}"
    cfg = load_config(None, {"index.backend": "qdrant", "index.url": url}).index
    with pytest.raises(IndexUnreachable, match=rf"cannot reach the qdrant index at {url} .*"
                                               r"Fix: check that the Qdrant server") as err:
        _cls().open(cfg, "hyrax-x", create=True)
    assert key not in str(err.value) and "not rebuilt" in str(err.value)
    with pytest.raises(IndexUnreachable, match=url) as err:
        _cls().exists({"backend": "qdrant", "url": url}, "hyrax-x")
    assert key not in str(err.value)
    index_location = {"backend": "qdrant", "url": url, "hnsw_ef": 64}
    assert key not in json.dumps(index_location)

    # the key from a file when $QDRANT_API_KEY is unset
    from hyrax_mlops.vectors.qdrant import api_key

    monkeypatch.delenv("QDRANT_API_KEY")
    (tmp_path / "key").write_text(key + "\n")
    monkeypatch.setenv("QDRANT_API_KEY_FILE", str(tmp_path / "key"))
    assert api_key() == key


def test_a_url_with_userinfo_is_refused(monkeypatch):
    url = "http://admin:pw-Hk2@127.0.0.1:6333"
    with pytest.raises(ConfigError, match="must not hold credentials") as err:
        load_config(None, {"index.backend": "qdrant", "index.url": url})
    assert "pw-Hk2" not in str(err.value)
    with pytest.raises(ConfigError, match="must not hold credentials") as err:
        _cls().reopen({"backend": "qdrant", "url": url}, "hyrax-x")  # a hand-made location
    assert "pw-Hk2" not in str(err.value)
