"""Splits, normalisation, the provider, models and the training loop, on real XDF stamps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits

import hyrax_mlops as hm
from hyrax_mlops.config import load_config
from hyrax_mlops.data.normalize import fit_normalizer
from hyrax_mlops.data.provider import DataProvider
from hyrax_mlops.data.splits import assign_splits
from hyrax_mlops.engine.loop import fit
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.models import build_model

from conftest import DATA


def real_stamps() -> np.ndarray:
    files = sorted((DATA / "xdf_fits" / "stamps").glob("*.fits"))
    return np.stack([fits.getdata(f).astype(np.float32) for f in files])


def test_splits_are_deterministic_disjoint_and_stable_when_objects_are_added():
    ids = [f"OBJ{i:06d}" for i in range(20000)]
    splits = assign_splits(ids, [0.8, 0.1, 0.1], seed=0)
    assert set(splits) == {"train", "val", "test"}
    for name, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert (splits == name).mean() == pytest.approx(frac, abs=0.01)
    assert (assign_splits(ids[::-1], [0.8, 0.1, 0.1])[::-1] == splits).all()  # order-free
    more = assign_splits(ids + ["NEW1", "NEW2"], [0.8, 0.1, 0.1])
    assert (more[:-2] == splits).all()
    assert (assign_splits(ids, [0.8, 0.1, 0.1], seed=1) != splits).any()


def test_normalisation_per_band_matches_its_definition():
    x = real_stamps()
    for method in ("asinh", "log", "zscore", "none"):
        norm = fit_normalizer(method, x)
        y = norm.apply(x)
        assert y.dtype == np.float32 and y.shape == x.shape
        for b in range(3):
            band = x[:, b].astype(np.float64)
            if method == "zscore":
                ref = (band - band.mean()) / band.std()
            elif method == "none":
                ref = band
            else:
                med = np.median(band)
                sigma = 1.4826 * np.median(np.abs(band - med))
                z = (band - med) / sigma
                ref = np.arcsinh(z) if method == "asinh" else np.log1p(np.clip(z, 0, None))
            np.testing.assert_allclose(y[:, b], ref, rtol=1e-4, atol=1e-4)
    assert fit_normalizer("asinh", x).to_dict()["method"] == "asinh"


def test_provider_serves_normalised_splits_from_the_dataset_run(demo_store):
    result, cfg = demo_store
    provider = DataProvider(result["dataset"].run_id, cfg.data)
    sizes = {s: len(provider.rows(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 300 and sizes["train"] > 200 and sizes["val"] > 10
    batch = next(iter(provider.dataloader("train", batch_size=16)))
    assert batch["image"].shape == (16, 3, 64, 64) and batch["image"].dtype == torch.float32
    row = int(batch["row"][0])
    raw = provider.data.images([row])[0]
    np.testing.assert_allclose(batch["image"][0].numpy(), provider.normalizer.apply(raw))


def test_training_is_deterministic_for_a_seed(demo_store, tmp_path):
    result, cfg = demo_store
    cfg = hm.load_config(cfg, {"train.epochs": 2})
    losses = []
    for attempt in range(2):
        torch.manual_seed(cfg.train.seed)
        provider = DataProvider(result["dataset"].run_id, cfg.data)
        model = build_model(cfg.model, provider.input_shape)
        res = fit(model, provider.dataloader("train", shuffle=True, seed=cfg.train.seed),
                  provider.dataloader("val"), cfg.train, tmp_path / f"ck{attempt}.pt")
        losses.append([(h.train_loss, h.val_loss) for h in res.history])
    assert losses[0] == losses[1]
    assert losses[0][1][0] < losses[0][0][0]  # it learns


def test_early_stopping_and_a_diverging_loss(demo_store, tmp_path):
    result, cfg = demo_store
    provider = DataProvider(result["dataset"].run_id, cfg.data)
    stop_cfg = hm.load_config(cfg, {"train.epochs": 30, "train.lr": 1e-9,
                                    "train.early_stopping_patience": 1}).train
    torch.manual_seed(0)
    model = build_model(cfg.model, provider.input_shape)
    res = fit(model, provider.dataloader("train"), provider.dataloader("val"), stop_cfg,
              tmp_path / "a.pt")
    assert res.stopped_early and len(res.history) < 30

    bad = hm.load_config(cfg, {"train.lr": 1e12, "train.grad_clip": 0}).train
    with pytest.raises(FloatingPointError, match="train.lr"):
        fit(build_model(cfg.model, provider.input_shape), provider.dataloader("train"),
            provider.dataloader("val"), bad, tmp_path / "b.pt")


def test_a_user_model_by_import_path_trains_and_embeds(demo_store):
    result, cfg = demo_store
    cfg = hm.load_config(cfg, {"model": {"name": "user_models:TinyEncoder", "hidden": 6},
                               "train.epochs": 1})
    trained = hm.train(cfg, dataset=result["dataset"].run_id)
    import mlflow

    assert mlflow.get_run(trained.run_id).data.params["model.name"] == "user_models:TinyEncoder"
    emb = hm.infer(cfg, train_run=trained.run_id)
    from hyrax_mlops.stages.infer import read_embeddings

    ids, vectors = read_embeddings(emb.run_id)
    assert vectors.shape == (300, 6)


def test_model_construction_errors_say_what_to_do():
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*len\\(widths\\) = 8"):
        build_model(load_config().model, (3, 36, 36))
    with pytest.raises(ConfigError, match="must be a torch.nn.Module"):
        build_model(load_config(None, {"model.name": "collections:OrderedDict"}).model, (3, 8, 8))


def test_a_pass_in_order_normalises_straight_from_the_shards(tmp_path):
    """infer reads rows in order: a batch inside one shard is normalised from a read-only
    view of it (no copy first), and equals what gathering the rows gives; a batch across
    shards or out of order is gathered; the shards on disk are never written."""
    from hyrax_mlops.data.dataset import Dataset, DatasetWriter
    from hyrax_mlops.data.normalize import Normalizer
    from hyrax_mlops.data.provider import _Images

    stamps = np.random.default_rng(0).normal(size=(35, 3, 8, 8)).astype(np.float32) * 10
    writer = DatasetWriter(tmp_path / "ds", (3, 8, 8), ["g", "r", "i"], 10)
    for i, s in enumerate(stamps):
        writer.add({"object_id": f"{i:05d}"}, s)
    writer.close({"name": "test"}, len(stamps))
    data = Dataset(tmp_path / "ds")
    view = data.run_view(np.arange(10, 20))
    assert view is not None and not view.flags.writeable
    np.testing.assert_array_equal(view, stamps[10:20])
    assert data.run_view(np.arange(15, 25)) is None  # crosses shards
    assert data.run_view(np.array([3, 5])) is None and data.run_view(np.array([4, 3])) is None
    for norm in (fit_normalizer("asinh", stamps), Normalizer("none", [], [])):
        images = _Images(data, np.arange(len(stamps)), norm)
        for idx in (list(range(10, 20)), list(range(15, 25)), [0, 7, 3]):
            got = images.__getitems__(idx)["image"]
            assert got.numpy().flags.writeable
            np.testing.assert_allclose(got.numpy(), norm.apply(stamps[idx].copy()), rtol=1e-6)
    np.testing.assert_array_equal(data.images(np.arange(len(stamps))), stamps)


def test_a_model_in_a_local_store_is_read_where_it_is(demo_store, monkeypatch):
    """Loading a model for infer reads its bundle in the store's own folder: no copy (the
    copy was most of what loading cost), the same weights as the model MLflow serves."""
    import mlflow

    from hyrax_mlops.engine.bundle import load_bundle

    result, _ = demo_store
    uri = f"runs:/{result['train'].run_id}/model"
    served = mlflow.pyfunc.load_model(uri)  # before downloads are refused below

    def refuse(*args, **kwargs):
        raise AssertionError("downloaded a model that sits on a local disk")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", refuse)
    loaded = load_bundle(uri)
    assert loaded.run_id == result["train"].run_id
    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        mine = loaded.model.eval().embed(
            {"image": torch.from_numpy(loaded.normalizer.apply(x.copy()))}).numpy()
    theirs = np.stack(served.predict(x)["embedding"].to_list())
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_model_info_of_a_local_runs_uri_is_mlflows_without_its_lookups(demo_store,
                                                                      monkeypatch):
    """infer resolves `runs:/RUN/model` with one search and reads MLmodel where it is; the
    answer is MLflow's own, and a run that does not exist is an error, not another model."""
    import mlflow

    from hyrax_mlops.engine.bundle import model_info

    result, _ = demo_store
    uri = f"runs:/{result['train'].run_id}/model"
    theirs = mlflow.models.get_model_info(uri)
    monkeypatch.setattr(mlflow.models, "get_model_info", lambda u: pytest.fail(u))
    mine = model_info(uri)
    for field in ("run_id", "model_id", "model_uri", "artifact_path", "signature", "flavors",
                  "model_uuid"):
        assert getattr(mine, field) == getattr(theirs, field), field
    with pytest.raises(Exception, match="0123456789abcdef"):
        model_info("runs:/0123456789abcdef/model")


def test_a_model_is_built_for_its_weights_without_initialising_them():
    """`with_weights` builds on the meta device and takes the loaded tensors; a model with a
    tensor the weights do not hold, or a constructor that reads tensor values, is built as
    usual, never left holding meta tensors."""
    from hyrax_mlops.engine.bundle import with_weights
    from hyrax_mlops.models.autoencoder import ConvAutoencoder

    torch.manual_seed(0)
    trained = ConvAutoencoder((3, 32, 32), latent_dim=8).eval()
    state = trained.state_dict()
    inits = []
    orig = torch.nn.init.kaiming_uniform_
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.init, "kaiming_uniform_", lambda tensor, *a, **k: inits.append(
            tensor.device.type) or orig(tensor, *a, **k))
        rebuilt = with_weights(lambda: ConvAutoencoder((3, 32, 32), latent_dim=8), state)
    assert inits and set(inits) == {"meta"}  # nothing initialised on a real device
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval().embed({"image": x}), trained.embed({"image": x}))
    assert not any(t.is_meta for t in (*rebuilt.parameters(), *rebuilt.buffers()))

    class Scratch(torch.nn.Module):  # a buffer not in the weights
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("grid", torch.arange(3.0), persistent=False)

    got = with_weights(Scratch, Scratch().state_dict())
    assert torch.equal(got.grid, torch.arange(3.0))

    class Reads(torch.nn.Module):  # computes with a tensor's value while being built
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, int(torch.tensor(3).item()))

    weights = Reads().state_dict()
    got = with_weights(Reads, weights)
    assert torch.equal(got.lin.weight, weights["lin.weight"]) and not got.lin.weight.is_meta


def test_inference_reads_every_row_without_working_out_splits(demo_store, monkeypatch):
    """Splits (a hash of every id: seconds at 10M) are worked out when a split is asked for;
    inference reads all rows and asks for none."""
    from hyrax_mlops.engine.bundle import load_bundle

    result, cfg = demo_store
    normalizer = load_bundle(f"runs:/{result['train'].run_id}/model").normalizer
    calls = []
    monkeypatch.setattr("hyrax_mlops.data.provider.assign_splits",
                        lambda *a: calls.append(a) or assign_splits(*a))
    provider = DataProvider(result["dataset"].run_id, cfg.data, normalizer=normalizer)
    seen = sum(len(b["row"]) for b in provider.dataloader(None, batch_size=64, cache=False))
    assert seen == len(provider.data) and calls == []
    train = provider.rows("train")
    assert len(calls) == 1 and 0 < len(train) < seen
    provider.rows("val")
    assert len(calls) == 1  # once per provider
