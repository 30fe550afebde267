"""The fast paths of data loading give exactly what the plain paths give."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from hyrax_mlops.data.prefetch import prefetch
from hyrax_mlops.data.provider import DataProvider
from hyrax_mlops.tracking import ArtifactCache


def test_in_memory_batches_equal_batches_read_from_shards(demo_store):
    result, cfg = demo_store
    dataset = result["dataset"].run_id
    cached = DataProvider(dataset, cfg.data)
    uncached = DataProvider(dataset, cfg.data.model_copy(update={"cache_gb": 0.0}))
    assert cached._in_memory() is not None and uncached._in_memory() is None
    for split in ("train", "val", None):
        a = list(cached.dataloader(split, shuffle=True, seed=3))
        b = list(uncached.dataloader(split, shuffle=True, seed=3))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["row"], y["row"])
            assert torch.equal(x["image"], y["image"])
    one = cached.torch_dataset("val")[2]  # single items still work (figures, user code)
    assert one["image"].shape == tuple(cached.input_shape)
    rows = cached.rows("val")
    assert torch.equal(one["image"], torch.from_numpy(
        cached.normalizer.apply(cached.data.images([rows[2]]))[0]))


def test_gathering_rows_across_shards_keeps_the_order_asked(demo_store):
    result, cfg = demo_store
    data = DataProvider(result["dataset"].run_id, cfg.data).data
    rows = np.array([len(data) - 1, 0, 5, len(data) - 1, 2])
    one_by_one = np.stack([data.images([r])[0] for r in rows])
    assert np.array_equal(data.images(rows), one_by_one)


def test_a_local_artifact_store_is_read_in_place(demo_store):
    import mlflow

    result, cfg = demo_store
    run = mlflow.get_run(result["dataset"].run_id)
    path = ArtifactCache.of(cfg).fetch(run.info.run_id, "dataset")
    assert str(path).startswith(run.info.artifact_uri.removeprefix("file://"))
    assert (path / "manifest.json").is_file()


def test_prefetch_keeps_order_and_raises_the_producers_error_in_the_consumer():
    assert list(prefetch(range(100), depth=3)) == list(range(100))

    def broken():
        yield 1
        raise ValueError("shard 7 is truncated")

    got = []
    with pytest.raises(ValueError, match="shard 7 is truncated"):
        for item in prefetch(broken()):
            got.append(item)
    assert got == [1]


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():
    before = threading.active_count()
    for item in prefetch(iter(range(10**9)), depth=2):
        if item == 5:
            break
    assert threading.active_count() == before
