"""The model library on real XDF stamps: augmentations that never mix bands, SimCLR and BYOL
learning through the train stage, and a stamp classifier trained from a labels catalog with its
metrics, figures and class probabilities in MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm
from hyrax_mlops.data.augment import AUGMENTATIONS, Augment
from hyrax_mlops.data.provider import DataProvider
from hyrax_mlops.stages.infer import read_embeddings

SMALL = {"train.epochs": 3, "train.early_stopping_patience": 0, "data.batch_size": 32}


def history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, key),
                                    key=lambda m: m.step)]


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_no_augmentation_mixes_bands(name, demo_store):
    result, cfg = demo_store
    x = DataProvider(result["dataset"].run_id, cfg.data).torch_dataset("val")
    batch = torch.stack([x[i]["image"] for i in range(8)])
    batch[:, 1] = 0.0  # an empty band must stay empty whatever is done to the others
    out = Augment([name], strength=2.0)(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert torch.count_nonzero(out[:, 1]) == 0
    assert torch.isfinite(out).all()
    if name == "dihedral":  # a rotation or flip keeps each band's pixels, only moves them
        for i in range(len(batch)):
            torch.testing.assert_close(out[i, 0].flatten().sort().values,
                                       batch[i, 0].flatten().sort().values)


def test_unknown_augmentations_are_named_with_the_choices():
    with pytest.raises(ValueError, match="colour_jitter.*choose from: .*dihedral"):
        Augment(["colour_jitter"])


@pytest.mark.parametrize(("model", "backbone"), [("simclr", "conv"), ("byol", "resnet18")])
def test_self_supervised_models_learn_on_xdf_stamps(model, backbone, demo_store):
    result, cfg = demo_store
    run = hm.train(cfg, {**SMALL, "model": {"name": model, "backbone": backbone, "width": 8,
                                            "hidden_dim": 64, "projection_dim": 32}},
                   dataset=result["dataset"].run_id)
    got = mlflow.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["model.name"] == model
    losses = history(run.run_id, "train_loss")
    assert len(losses) == 3 and losses[-1] < losses[0]
    if model == "simclr":  # named parts of the step are logged beside the loss
        assert len(history(run.run_id, "train_pair_accuracy")) == 3
    emb = hm.infer(cfg, train_run=run.run_id)
    ids, vectors = read_embeddings(emb.run_id)
    assert vectors.shape == (300, 64) and np.isfinite(vectors).all()  # width 8 x 8: last stage
    if model == "simclr":  # no reconstruction: "residual" refused before a run, "pixels" scores
        from hyrax_mlops.errors import ConfigError
        from hyrax_mlops.tracking import ArtifactCache

        outliers = {"analyse.analyses": ["outliers"]}
        before = len(mlflow.search_runs(search_all_experiments=True))
        with pytest.raises(ConfigError, match=r'"residual" needs a model with a reconstruct'):
            hm.analyse(cfg, {**outliers, "analyse.outlier_methods": ["residual"]},
                       embeddings=emb.run_id)
        assert len(mlflow.search_runs(search_all_experiments=True)) == before
        scored = hm.analyse(cfg, {**outliers, "analyse.outlier_methods": ["pixels", "knn"]},
                            embeddings=emb.run_id)
        cache = ArtifactCache.of(cfg)
        table = pd.read_parquet(cache.fetch(scored.run_id, "analysis/outliers.parquet"))
        assert len(table) == 300 and table["pixels_statistic"].notna().all()
        assert set(table["explained_by"].str.split(":").str[0]) <= {"pixels", "knn"}
        stats = pd.read_parquet(cache.fetch(scored.run_id, "analysis/stamp_statistics.parquet"))
        assert "sharp_pixel" in stats and not any(c.startswith("residual") for c in stats)


def test_byol_target_follows_the_online_network():
    from hyrax_mlops.models.ssl import BYOL

    torch.manual_seed(0)
    m = BYOL((3, 32, 32), width=4, hidden_dim=16, projection_dim=8, momentum=0.5)
    before = [p.clone() for p in m.target_backbone.parameters()]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    out = m.training_step({"image": torch.randn(6, 3, 32, 32)})
    out["loss"].backward()
    opt.step()
    m.after_step()
    for b, t, o in zip(before, m.target_backbone.parameters(), m.backbone.parameters(),
                       strict=True):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o)
    assert not any(p.requires_grad for p in m.target_backbone.parameters())


def test_a_stamp_classifier_from_a_labels_catalog(demo_store, tmp_path):
    result, cfg = demo_store
    # real labels from the real measurements: extended (large half-light radius) or compact
    catalog = DataProvider(result["dataset"].run_id, cfg.data).catalog
    labels = pd.DataFrame({"object_id": catalog["object_id"],
                           "morphology": np.where(catalog["r_half"] > catalog["r_half"]
                                                  .quantile(0.7), "extended", "compact")})
    labels.loc[labels.index[::25], "morphology"] = None  # unlabelled objects are left out
    labels.to_csv(tmp_path / "labels.csv", index=False)
    over = {**SMALL, "train.epochs": 4, "model": {"name": "stamp_classifier", "width": 8},
            "data.label_column": "morphology", "data.labels_file": str(tmp_path / "labels.csv")}
    run = hm.train(cfg, over, dataset=result["dataset"].run_id)
    data = mlflow.get_run(run.run_id).data
    assert data.params["model_resolved.classes"] == "['compact', 'extended']"
    for key in ("val_accuracy", "val_balanced_accuracy", "val_roc_auc",
                "val_recall_extended", "val_precision_compact", "train_accuracy"):
        assert len(history(run.run_id, key)) == 4, key
    assert history(run.run_id, "train_loss")[-1] < history(run.run_id, "train_loss")[0]
    assert data.metrics["n_unlabelled"] == 12
    assert 0.0 <= data.metrics["test_balanced_accuracy"] <= 1.0
    files = {f.path for f in MlflowClient().list_artifacts(run.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/roc.png"} <= files

    emb = hm.infer(cfg, train_run=run.run_id)
    import pyarrow.parquet as pq

    from hyrax_mlops.tracking import ArtifactCache

    table = pq.read_table(ArtifactCache.of(cfg).fetch(emb.run_id, "embeddings.parquet")).to_pandas()
    assert len(table) == 300  # every object, labelled or not, gets probabilities
    probs = np.stack(table["probabilities"].to_numpy())
    assert probs.shape == (300, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert set(table["predicted_class"]) <= {"compact", "extended"}
    assert list(pq.read_schema(ArtifactCache.of(cfg).fetch(emb.run_id, "embeddings.parquet"))
                .metadata[b"hyrax.classes"].decode().split(",")) == ["compact", "extended"]
    # floats are written plain (dictionary encoding them tripled the write), class names are
    # dictionary-encoded
    chunks = pq.ParquetFile(ArtifactCache.of(cfg).fetch(emb.run_id, "embeddings.parquet")
                            ).metadata.row_group(0)
    encodings = {chunks.column(i).path_in_schema.split(".")[0]: chunks.column(i).encodings
                 for i in range(chunks.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["embedding"] + encodings["probabilities"])
    assert any("DICTIONARY" in e for e in encodings["predicted_class"])
    classes = np.array(["compact", "extended"])
    assert (table["predicted_class"].to_numpy() == classes[probs.argmax(axis=1)]).all()
    counted = mlflow.get_run(emb.run_id).data.metrics
    assert [counted[f"n_predicted_{c}"] for c in classes] == [
        int((table["predicted_class"] == c).sum()) for c in classes]


def test_embeddings_are_read_a_row_group_at_a_time_as_written(demo_store, tmp_path):
    """read_embeddings fills one array row group by row group: the demo's embeddings written
    7 rows to a group (a ragged last one) read back as exactly the file's ids, in order, and
    its vectors, writable float32."""
    import pyarrow.parquet as pq

    from hyrax_mlops.stages.infer import read_embeddings_file
    from hyrax_mlops.tracking import ArtifactCache

    result, cfg = demo_store
    table = pq.read_table(ArtifactCache.of(cfg).fetch(result["infer"].run_id,
                                                      "embeddings.parquet"))
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=7)
    assert len(table) % 7 and pq.ParquetFile(tmp_path / "e.parquet").num_row_groups > 1
    ids, vectors = read_embeddings_file(tmp_path / "e.parquet")
    assert ids.tolist() == table["object_id"].to_pylist()
    np.testing.assert_array_equal(vectors, np.stack(table["embedding"].to_numpy(
        zero_copy_only=False)))
    assert vectors.dtype == np.float32 and vectors.flags.writeable
