"""A catalog-only dataset of real OGLE-III variable stars, classified from catalog features
(period, amplitude, Fourier parameters, magnitudes) with missing values masked."""

from __future__ import annotations

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm
from hyrax_mlops.tracking import ArtifactCache

from conftest import DATA

OGLE = DATA / "ogle3" / "ogle3_variables.csv.gz"
FEATURES = ["log10:P_1", "A_1", "R21_1", "phi21_1", "R31_1", "phi31_1", "I", "V"]


def test_ogle3_tabular_classifier_trains_and_predicts(store):
    over = {"tracking.experiment": "test", "ingest.catalog": str(OGLE),
            "data.label_column": "Type", "data.features": FEATURES, "data.batch_size": 256,
            "model": {"name": "tabular_classifier", "hidden": [64, 64]},
            "train.epochs": 4, "train.early_stopping_patience": 0, "train.lr": 3e-3}
    dataset = hm.ingest(None, over)
    data = mlflow.get_run(dataset.run_id).data
    assert data.metrics["n_objects"] == 12640 and data.tags["hyrax.dataset.shape"] == ""
    run = hm.train(None, over, dataset=dataset.run_id)
    got = mlflow.get_run(run.run_id).data
    assert got.params["model_resolved.classes"] == str(
        sorted(["Cep", "LPV", "RRLyr", "DSCT", "T2Cep", "DPV", "aCep", "RCB"]))
    losses = [m.value for m in sorted(MlflowClient().get_metric_history(run.run_id,
                                                                        "train_loss"),
                                      key=lambda m: m.step)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert got.metrics["test_balanced_accuracy"] > 0.6  # chance is 0.125 over eight classes
    emb = hm.infer(None, over, train_run=run.run_id)
    table = pq.read_table(ArtifactCache.at().fetch(emb.run_id, "embeddings.parquet")).to_pandas()
    probs = np.stack(table["probabilities"].to_numpy())
    assert probs.shape == (12640, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    row = table.set_index("object_id").loc["OGLE-BLG-CEP-01"]
    assert row["predicted_class"] in {"Cep", "T2Cep", "aCep", "RRLyr", "DSCT"}


def test_unknown_feature_columns_and_transforms_are_named(store):
    from hyrax_mlops.errors import ConfigError

    over = {"tracking.experiment": "test", "ingest.catalog": str(OGLE),
            "data.label_column": "Type", "model": {"name": "tabular_classifier"}}
    dataset = hm.ingest(None, over)
    with pytest.raises(ConfigError, match="'P1', which is not a catalog column"):
        hm.train(None, {**over, "data.features": ["P1"]}, dataset=dataset.run_id)
    with pytest.raises(ConfigError, match="only transform is log10"):
        hm.train(None, {**over, "data.features": ["sqrt:P_1"]}, dataset=dataset.run_id)
