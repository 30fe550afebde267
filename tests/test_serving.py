"""Model registry and serving: a demo train run's model registered with an alias, used by
`infer` through `models:/NAME@alias`, and served by `mlflow models serve` over HTTP, answering
cutouts (a FITS stamp's pixels, made by the README's command) with the same embeddings `infer`
wrote, and refusing a wrong shape with a JSON message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

import hyrax_mlops as hm

from servers import model_server


def embeddings_of(run_id: str) -> pd.DataFrame:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                               artifact_path="embeddings.parquet")
    return pd.read_parquet(path).set_index("object_id")


@pytest.fixture
def champion(demo_sandbox):
    result, cfg = demo_sandbox
    reg = hm.register(result["train"].run_id, "xdf-autoencoder", alias="champion")
    return reg, result, cfg


def test_register_sets_the_alias_and_infer_takes_it(champion, capsys):
    from mlflow.tracking import MlflowClient

    reg, result, cfg = champion
    capsys.readouterr()
    again = hm.register(result["train"].run_id, "xdf-autoencoder")  # a second version
    fresh = hm.register(result["train"].run_id, "xdf-autoencoder-copy")  # a new name
    assert int(again.version) == int(reg.version) + 1 and fresh.version == "1"
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == "", printed  # MLflow's own lines stay off
    assert "models:/xdf-autoencoder@champion" in str(reg)
    version = MlflowClient().get_model_version_by_alias("xdf-autoencoder", "champion")
    assert str(version.version) == reg.version
    assert version.tags["hyrax.run_id"] == result["train"].run_id
    run = hm.infer(cfg, {"infer.model": "models:/xdf-autoencoder@champion"}, force=True)
    ours, theirs = embeddings_of(run.run_id), embeddings_of(result["infer"].run_id)
    np.testing.assert_allclose(np.stack(ours.loc[theirs.index[:20], "embedding"]),
                               np.stack(theirs["embedding"].iloc[:20]), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="is a 'download' run"):
        hm.register(result["dataset"].run_id, "nope")


def test_mlflow_models_serve_answers_arrays(champion, demo_dir):
    import mlflow

    from hyrax_mlops.data.dataset import Dataset

    reg, result, cfg = champion
    expected = embeddings_of(result["infer"].run_id)
    data = Dataset(Path(mlflow.artifacts.download_artifacts(
        run_id=result["dataset"].run_id, artifact_path="dataset")))
    pixels = data.images([0, 1])  # raw pixels, as a user would send them
    with model_server("models:/xdf-autoencoder@champion", mlflow.get_tracking_uri(),
                      demo_dir / "serve.log") as url:
        check_served_embeddings(url, pixels, data.ids[:2], expected)


def check_served_embeddings(url: str, pixels, ids, expected: pd.DataFrame) -> None:
    """Arrays and base64 FITS in, the embeddings `infer` wrote out; a bad shape is refused."""
    answer = requests.post(f"{url}/invocations", json={"inputs": pixels.tolist()},
                           timeout=60)
    assert answer.ok, answer.text
    got = answer.json()["predictions"]
    assert len(got) == 2
    np.testing.assert_allclose([g["embedding"] for g in got],
                               np.stack(expected.loc[ids, "embedding"]),
                               rtol=1e-4, atol=1e-5)

    bad = requests.post(f"{url}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
    assert bad.status_code == 400, bad.text
    error = bad.json()  # a JSON answer saying why, not a stack trace
    assert error["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in error
    assert "does not match expected shape" in error["message"], error["message"]
    assert "Traceback" not in bad.text


def readme_serving_commands() -> list[str]:
    """The README's commands that make the request body and send it, as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Model registry and serving"):]
    block = section[section.index("```bash"):].split("```")[1]
    lines = [ln for ln in block.splitlines() if ln.startswith(("python -c", "curl "))]
    assert len(lines) == 2, lines
    return lines


def test_readme_request_runs_as_written(champion, demo_dir, tmp_path):
    """The README's stamp.json + curl, run literally (only the port differs), answer with the
    embedding `infer` wrote for that galaxy; the model shows its signature, input example and
    its best epoch's metrics."""
    import os
    import subprocess

    import mlflow

    reg, result, cfg = champion
    expected = embeddings_of(result["infer"].run_id)
    model = mlflow.models.get_model_info("models:/xdf-autoencoder@champion")
    inputs = model.signature.inputs.to_dict()[0]
    assert inputs["type"] == "tensor" and inputs["tensor-spec"]["dtype"] == "float32"
    assert inputs["tensor-spec"]["shape"][0] == -1 and len(inputs["tensor-spec"]["shape"]) == 4
    assert model.saved_input_example_info is not None

    logged = mlflow.get_logged_model(model.model_id)
    run = mlflow.get_run(result["train"].run_id)
    on_model = {m.key: m for m in logged.metrics}
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    best = min(history, key=lambda m: m.value)
    assert on_model["val_loss"].value == pytest.approx(best.value)  # the best epoch, not the 1st
    assert on_model["best_val_loss"].value == pytest.approx(run.data.metrics["best_val_loss"])
    assert on_model["final_val_loss"].value == pytest.approx(history[-1].value)
    assert "test_loss" in on_model and "final_train_loss" in on_model
    assert len(history) == cfg.train.epochs  # linking added no point to the run's curve

    (tmp_path / "tests").symlink_to(Path(__file__).resolve().parent)  # README paths from repo root
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    make_body, curl = readme_serving_commands()
    with model_server("models:/xdf-autoencoder@champion", mlflow.get_tracking_uri(),
                      demo_dir / "serve-readme.log") as url:
        subprocess.run(make_body, shell=True, check=True, cwd=tmp_path, env=env, timeout=60)
        out = subprocess.run(curl.replace("http://127.0.0.1:5001", url), shell=True, check=True,
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    got = json.loads(out.stdout)["predictions"]
    assert len(got) == 1
    np.testing.assert_allclose(got[0]["embedding"], expected.loc["XDF00001", "embedding"],
                               rtol=1e-4, atol=1e-5)


MM = Path(__file__).parent / "data" / "multimodal"
SERIES = {"pipeline.dataset": "ingest", "ingest.catalog": str(MM / "objects.csv"),
          "data.label_column": "coarse_class", "data.split": [0.6, 0.2, 0.2],
          "data.lightcurve_points": 64, "data.spectrum_grid": [3600.0, 10000.0, 256],
          "train.epochs": 2, "train.early_stopping_patience": 0, "data.batch_size": 8}


def served_answers_as_infer(cfg_over: dict, log: Path) -> list[str]:
    """Train and infer from `cfg_over`, serve the train run's model with `mlflow models serve`
    and send it the model's own serving_input_example.json (two real objects): its answer
    is the embeddings and class probabilities `infer` wrote for them. Returns what it read."""
    import mlflow

    embedded = hm.infer(None, cfg_over)
    train_run = mlflow.get_run(embedded.run_id).data.tags["hyrax.input.model"]
    uri = mlflow.get_run(train_run).data.tags["hyrax.model_uri"]
    where = mlflow.get_logged_model(uri.rsplit("/", 1)[-1]).artifact_location
    request = json.loads(Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"{where}/serving_input_example.json")).read_text())
    columns = request["dataframe_split"]["columns"]
    expected = embeddings_of(embedded.run_id)
    with model_server(uri, mlflow.get_tracking_uri(), log) as url:
        answer = requests.post(f"{url}/invocations", json=request, timeout=60)
        assert answer.ok, answer.text
        got = answer.json()["predictions"]
        bad = requests.post(f"{url}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
    first_two = expected.iloc[:2]  # the example is the dataset's first two objects
    np.testing.assert_allclose([g["embedding"] for g in got], np.stack(first_two["embedding"]),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([g["probabilities"] for g in got],
                               np.stack(first_two["probabilities"]), rtol=1e-4, atol=1e-5)
    assert [g["predicted_class"] for g in got] == list(first_two["predicted_class"])
    assert bad.status_code == 400 and "Traceback" not in bad.text
    return columns


def test_a_served_fusion_model_reads_light_curves_spectra_and_features(store):
    over = {**SERIES, "data.features": ["ra", "dec"],
            "model": {"name": "fusion_classifier", "fusion": "concat", "dim": 16}}
    columns = served_answers_as_infer(over, store / "serve-fusion.log")
    assert {"ra", "dec", "spectrum", "lightcurve"} <= set(columns)


def test_a_served_tabular_model_reads_catalog_columns(store):
    """The real OGLE-III variables (a catalog, no pixels): `tabular_classifier` reads the
    catalog features, missing values included."""
    import gzip

    with gzip.open(Path(__file__).parent / "data" / "ogle3" / "ogle3_variables.csv.gz") as f:
        stars = pd.read_csv(f).groupby("Type").head(40)  # 40 of each class: a quick model
    stars.to_csv(store / "stars.csv", index=False)
    over = {"pipeline.dataset": "ingest", "ingest.catalog": str(store / "stars.csv"),
            "data.label_column": "Type", "model.name": "tabular_classifier",
            "data.features": ["log10:P_1", "A_1", "R21_1", "I", "V"],
            "train.epochs": 2, "train.early_stopping_patience": 0, "data.batch_size": 32}
    columns = served_answers_as_infer(over, store / "serve-tabular.log")
    assert set(columns) == {"P_1", "A_1", "R21_1", "I", "V"}
