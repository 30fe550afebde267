"""Model registry and serving: a demo train run's model registered with an alias, used by
`infer` through `models:/NAME@alias`, and served by `mlflow models serve` over HTTP, answering
cutouts sent as arrays or as FITS files with the same embeddings `infer` wrote."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

import hyrax_mlops as hm

from servers import model_server

STAMPS = Path(__file__).parent / "data" / "xdf_fits" / "stamps"


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


def test_register_sets_the_alias_and_infer_takes_it(champion):
    from mlflow.tracking import MlflowClient

    reg, result, cfg = champion
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


def test_mlflow_models_serve_answers_arrays_and_fits(champion, demo_dir):
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

    fits_b64 = base64.b64encode((STAMPS / "XDF00001.fits").read_bytes()).decode()
    answer = requests.post(f"{url}/invocations", json={
        "dataframe_split": {"columns": ["fits"], "data": [[fits_b64]]}}, timeout=60)
    assert answer.ok, answer.text
    np.testing.assert_allclose(answer.json()["predictions"][0]["embedding"],
                               expected.loc["XDF00001", "embedding"], rtol=1e-4, atol=1e-5)

    bad = requests.post(f"{url}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
    assert bad.status_code >= 400 and "bands, h, w" in bad.text
