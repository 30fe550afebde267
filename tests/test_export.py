"""`export`, a stage added as one module and one registration: the Python door, the CLI
subcommand and the MLproject entry point come from the registry, and its table holds each
object's catalog row, embedding and analysis columns, ids unchanged."""

from __future__ import annotations

import inspect

import mlflow
import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

import hyrax_mlops as hm
from hyrax_mlops.cli import main
from hyrax_mlops.errors import LineageError
from hyrax_mlops.stages.infer import read_embeddings


def test_export_writes_one_table_for_topcat(demo_sandbox, capsys):
    result, cfg = demo_sandbox
    infer_run = result["infer"].run_id
    assert {"embeddings", "analysis", "force"} <= set(inspect.signature(hm.export).parameters)
    analysed = hm.analyse(cfg, {"analyse.analyses": ["outliers"]}, embeddings=infer_run)
    exported = hm.export(cfg, embeddings=infer_run, analysis=analysed.run_id)
    local = mlflow.artifacts.download_artifacts(run_id=exported.run_id, artifact_path="export")
    fits = Table.read(f"{local}/objects.fits")
    ids, vectors = read_embeddings(infer_run)
    assert list(fits["object_id"]) == list(ids)
    np.testing.assert_allclose(np.asarray(fits["embedding"]), vectors)
    scores = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=analysed.run_id, artifact_path="analysis/columns.parquet"))
    expected = scores.set_index("object_id")["outlier_score"].loc[list(ids)].to_numpy()
    np.testing.assert_allclose(np.asarray(fits["outlier_score"]), expected, rtol=1e-6)
    flat = pd.read_parquet(f"{local}/objects.parquet")
    assert flat["flux"].tolist() == pytest.approx(list(fits["flux"]))
    assert mlflow.get_run(exported.run_id).data.metrics["n_objects"] == len(ids)
    # the run ids behind the table travel in its header; the app's thumbnails stay behind
    assert (fits.meta["HYRAXEMB"], fits.meta["HYRAXANA"]) == (infer_run, analysed.run_id)
    assert not any(str(v).startswith("data:image/") for c in flat.columns
                   for v in flat[c].head(50) if isinstance(v, str))

    # the CLI door is the same stage: reused, and it says where the table is
    assert main(["export", "--embeddings", infer_run, "--analysis", analysed.run_id,
                 "--set", "tracking.experiment=test"]) == 0
    out = capsys.readouterr().out
    assert f"reused  export-analysed  run {exported.run_id}" in out
    assert "objects, " in out and "export/objects.fits (embedding as one vector column)" in out
    shown = next(line.split()[2] for line in out.splitlines() if "next: open " in line)
    assert shown.endswith(f"{exported.run_id}/artifacts/export/objects.fits")  # in place
    assert len(Table.read(shown)) == len(ids)


def test_export_refuses_an_analysis_of_other_embeddings(demo_sandbox):
    result, cfg = demo_sandbox
    other = hm.infer(cfg, train_run=result["train"].run_id, dataset=result["dataset"].run_id,
                     force=True)
    analysed = hm.analyse(cfg, {"analyse.analyses": ["outliers"]}, embeddings=other.run_id)
    with pytest.raises(LineageError, match="was made from other embeddings than"):
        hm.export(cfg, embeddings=result["infer"].run_id, analysis=analysed.run_id)
