"""A trained model exported to ONNX beside its MLflow model: `hyrax-mlops export TRAIN_RUN
--onnx` and `train.export_onnx` write onnx/model.onnx (named inputs and outputs, dynamic batch
axis) as an artifact of the train run, checked with onnxruntime against PyTorch on real XDF
stamps; `infer.engine = "onnx"` embeds with it, as PyTorch does within the tolerance."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm
from hyrax_mlops.cli import main
from hyrax_mlops.errors import ConfigError, LineageError

from conftest import DATA


def _runs() -> int:
    return len(mlflow.search_runs(experiment_names=["test"], output_format="list"))


def _artifacts(run_id: str, path: str = "") -> set[str]:
    return {f.path for f in MlflowClient().list_artifacts(run_id, path)}


def _real_stamps(cfg, train_run: str, rows: np.ndarray):
    """Real stamps of the train run's dataset, normalised as infer does, and the model."""
    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine.bundle import load_bundle
    from hyrax_mlops.stages.infer import reading_settings

    loaded = load_bundle(f"runs:/{train_run}/model")
    dataset = mlflow.get_run(train_run).data.tags["hyrax.input.dataset"]
    provider = DataProvider(dataset, reading_settings(train_run), normalizer=loaded.normalizer)
    batch = provider.torch_dataset(None, cache=False).__getitems__(list(rows))
    return batch["image"], loaded.model.eval()


def test_export_onnx_matches_torch_on_real_stamps_and_infer_runs_it(demo_sandbox, capsys):
    from hyrax_mlops.engine.onnx_export import ARTIFACT, INFO_ARTIFACT, METRIC, TOLERANCE
    from hyrax_mlops.stages.infer import read_embeddings

    result, cfg = demo_sandbox
    dataset = result["dataset"].run_id

    # a model without an export: infer.engine=onnx says how to make one, before any run
    before = _runs()
    with pytest.raises(LineageError) as err:
        hm.infer(cfg, {"infer.engine": "onnx"}, train_run=result["train"].run_id)
    demo_train = result["train"].run_id
    assert f"hyrax-mlops export {demo_train} --onnx" in str(err.value)
    assert "train.export_onnx=true" in str(err.value)
    assert _runs() == before

    # a train run of our own (the shared demo's stays as it is), exported from the CLI
    trained = hm.train(cfg, dataset=dataset, force=True).run_id
    assert main(["export", trained, "--onnx", "--set", "tracking.experiment=test"]) == 0
    out = capsys.readouterr().out
    assert f"exported onnx/model.onnx of run {trained}: max |onnx - torch| = " in out
    assert f"next: hyrax-mlops infer --train-run {trained} --set infer.engine=onnx" in out
    assert {ARTIFACT, INFO_ARTIFACT} <= _artifacts(trained, "onnx")
    assert mlflow.models.get_model_info(f"runs:/{trained}/model").run_id == trained  # beside
    run = mlflow.get_run(trained)
    info = json.loads(mlflow.artifacts.load_text(f"runs:/{trained}/{INFO_ARTIFACT}"))
    check = info["check"]
    assert check["n_objects"] == 64 and check["batch_sizes"] == [1, 7, 64]
    assert check["tolerance"] == pytest.approx(TOLERANCE * max(1.0, check["output_scale"]))
    assert run.data.metrics[METRIC] == pytest.approx(check["max_abs_diff"])
    assert check["max_abs_diff"] <= check["tolerance"]
    assert run.data.tags["hyrax.onnx"] == ARTIFACT
    assert [i["name"] for i in info["inputs"]] == ["stamps"]
    assert [o["name"] for o in info["outputs"]] == ["embedding"]
    assert info["inputs"][0]["shape"][1:] == [3, 64, 64] and info["opset"] >= 17
    assert info["normalization"]["method"] == cfg.data.normalize

    # onnxruntime on real stamps it was not checked on, batches of 1 and 7: torch's outputs
    local = mlflow.artifacts.download_artifacts(run_id=trained, artifact_path=ARTIFACT)
    session = ort.InferenceSession(local, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["stamps"]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # a dynamic batch axis
    stamps, model = _real_stamps(cfg, trained, np.arange(1, 300, 37))
    with torch.no_grad():
        expected = model.embed({"image": stamps}).numpy()
    for n in (1, 7):
        (got,) = session.run(["embedding"], {"stamps": stamps[:n].numpy()})
        assert got.shape == (n, 16)
        np.testing.assert_allclose(got, expected[:n], rtol=0, atol=check["tolerance"])

    # asked again: the export there is kept
    assert main(["export", trained, "--onnx", "--set", "tracking.experiment=test"]) == 0
    assert f"kept    onnx/model.onnx of run {trained}" in capsys.readouterr().out

    # infer with the ONNX model: the embeddings PyTorch gives, within the tolerance
    torch_run = hm.infer(cfg, train_run=trained)
    onnx_run = hm.infer(cfg, {"infer.engine": "onnx", "infer.batch_size": 50},
                        train_run=trained)
    assert onnx_run.run_id != torch_run.run_id
    assert mlflow.get_run(onnx_run.run_id).data.tags["hyrax.onnx"] == \
        f"runs:/{trained}/{ARTIFACT}"
    ids_t, emb_t = read_embeddings(torch_run.run_id)
    ids_o, emb_o = read_embeddings(onnx_run.run_id)
    assert list(ids_o) == list(ids_t) and emb_o.shape == emb_t.shape == (300, 16)
    np.testing.assert_allclose(emb_o, emb_t, rtol=0, atol=check["tolerance"])
    assert hm.infer(cfg, {"infer.engine": "onnx", "infer.batch_size": 50},
                    train_run=trained).reused


def test_train_export_onnx_and_what_is_refused(demo_sandbox):
    from hyrax_mlops.engine.onnx_export import ARTIFACT, METRIC, SUPPORTED
    from hyrax_mlops.stages.train import check_config

    result, cfg = demo_sandbox
    trained = hm.train(cfg, {"train.export_onnx": True, "train.epochs": 1},
                       dataset=result["dataset"].run_id).run_id
    assert ARTIFACT in _artifacts(trained, "onnx")
    run = mlflow.get_run(trained)
    assert run.data.metrics[METRIC] < 1e-4 and run.data.tags["hyrax.onnx"] == ARTIFACT
    from hyrax_mlops.summaries import summarize

    assert any(line.startswith("onnx: onnx/model.onnx (max |onnx - torch| ")
               for line in summarize("train", trained))
    # the Python door keeps it, as the CLI does
    assert hm.export_onnx(trained, cfg).reused

    # models that read several modalities are refused before anything runs
    fusion = hm.load_config(cfg, {"train.export_onnx": True,
                                  "model": {"name": "fusion_classifier"},
                                  "data.label_column": "flux"})
    with pytest.raises(ConfigError, match="cannot be exported to ONNX: supported are") as err:
        check_config(fusion)
    assert SUPPORTED in str(err.value)
    # only train (or tune) runs have a model to export
    with pytest.raises(LineageError, match="is a 'infer' run, not one of: train, tune"):
        hm.export_onnx(result["infer"].run_id, cfg)
    assert main(["export", "--onnx", "--set", "tracking.experiment=test"]) == 2


def test_a_catalog_feature_classifier_exports_with_two_named_inputs(store):
    """tabular_classifier on real OGLE-III variables: inputs "tabular" and "tabular_mask",
    outputs "embedding" and "probabilities"; infer with onnx gives torch's classes."""
    from hyrax_mlops.stages.infer import read_embeddings

    over = {"tracking.experiment": "test",
            "ingest.catalog": str(DATA / "ogle3" / "ogle3_variables.csv.gz"),
            "data.label_column": "Type", "data.batch_size": 512,
            "data.features": ["log10:P_1", "A_1", "R21_1", "phi21_1", "I", "V"],
            "model": {"name": "tabular_classifier", "hidden": [32]}, "train.epochs": 1,
            "train.export_onnx": True}
    dataset = hm.ingest(None, over).run_id
    trained = hm.train(None, over, dataset=dataset).run_id
    info = json.loads(mlflow.artifacts.load_text(f"runs:/{trained}/onnx/model.json"))
    assert [i["name"] for i in info["inputs"]] == ["tabular", "tabular_mask"]
    assert [o["name"] for o in info["outputs"]] == ["embedding", "probabilities"]
    assert info["check"]["max_abs_diff"] <= info["check"]["tolerance"]
    runs = [hm.infer(None, {**over, "infer.engine": engine}, train_run=trained).run_id
            for engine in ("torch", "onnx")]
    (_, emb_t), (_, emb_o) = (read_embeddings(r) for r in runs)
    np.testing.assert_allclose(emb_o, emb_t, rtol=0, atol=info["check"]["tolerance"])
    classes = [pq_column(r, "predicted_class") for r in runs]
    assert classes[0] == classes[1] and len(classes[0]) == 12640


def pq_column(run_id: str, column: str) -> list:
    import pyarrow.parquet as pq

    from hyrax_mlops.tracking import ArtifactCache

    return pq.read_table(ArtifactCache.at().fetch(run_id, "embeddings.parquet")
                         ).column(column).to_pylist()
