"""Peel: two rounds of remove-the-top-outliers / retrain / analyse on the demo galaxies, each
a nested run under one peel run, with the removed ids and lineage kept; and a first round
from a selection file, as exported from the app."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

import hyrax_mlops as hm

PEEL = {"analyse.analyses": ["outliers"], "analyse.top_fraction": 0.05}


def table(run_id: str, path: str) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    return pd.read_csv(local) if path.endswith(".csv") else pd.read_parquet(local)


def test_two_rounds_peel_the_top_outliers_and_retrain(demo_sandbox, capsys):
    result, cfg = demo_sandbox
    start = hm.analyse(cfg, PEEL, embeddings=result["infer"].run_id)
    first_outliers = table(start.run_id, "analysis/outliers.parquet")
    flagged = set(first_outliers.loc[first_outliers["is_outlier"], "object_id"])
    assert len(flagged) == 15  # 5% of 300
    # the analysis columns reach search results and the app's explorer (colour/filter by them)
    hits = hm.search_by_id(result["index"].run_id, "XDF00001", 3, cfg)
    assert {"outlier_score", "outlier_rank"} <= set(hits.columns)
    from dash_app.data import AppData

    explorer = AppData(cfg).reduction(result["reduce"].run_id)
    assert "outlier_score" in explorer.columns()
    assert explorer.catalog["outlier_score"].notna().all()

    peel = hm.peel(cfg, PEEL, analyse=start.run_id, rounds=2)
    rounds = table(peel.run_id, "peel/rounds.csv")
    after_one = table(rounds["analyse"][0], "analysis/outliers.parquet")
    flagged2 = set(after_one.loc[after_one["is_outlier"], "object_id"])
    assert list(rounds["round"]) == [1, 2]
    assert list(rounds["removed"]) == [15, len(flagged2)]
    children = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"tags.`mlflow.parentRunId` = '{peel.run_id}'")
    stages = sorted(r.data.tags["hyrax.stage"] for r in children)
    assert stages == sorted(["filter", "train", "infer", "analyse"] * 2)
    assert all(r.info.status == "FINISHED" for r in children)

    ds1, ds2 = rounds["dataset"]
    removed1 = set(table(ds1, "filter/removed_ids.csv")["object_id"])
    assert removed1 == flagged  # round 1 took off exactly what the analysis flagged
    ids1 = set(table(ds1, "dataset/catalog.parquet")["object_id"])
    ids2 = set(table(ds2, "dataset/catalog.parquet")["object_id"])
    assert len(ids1) == 285 and not ids1 & flagged
    assert ids2 == ids1 - flagged2  # round 2 peels the retrained model's own outliers
    assert mlflow.get_run(ds2).data.tags["hyrax.input.dataset"] == ds1
    assert mlflow.get_run(rounds["train"][1]).data.tags["hyrax.input.dataset"] == ds2
    assert "quality.knn_purity" not in rounds or rounds["val_loss"].notna().all()
    history = mlflow.MlflowClient().get_metric_history(peel.run_id, "removed")
    assert [m.value for m in history] == [15, len(flagged2)]


    # the demo and its peeled retrain compared by latent quality out of the box: scored
    # against the demo's own label (colour, measured from the image), not dashes
    from hyrax_mlops.cli import main

    runs = [result["infer"].run_id, rounds["infer"][0]]
    compared = hm.compare(runs)
    assert set(compared["infer_run"]) == set(runs)
    assert list(compared["label"]) == ["colour", "colour"]
    assert list(compared["scored"]) == ["compare", "compare"]
    assert compared[["knn_purity", "knn_purity_chance", "silhouette"]].notna().all().all()
    assert main(["compare", *runs]) == 0
    out = capsys.readouterr().out
    print(out)
    for _, row in compared.iterrows():
        line = next(x for x in out.splitlines() if row["run"] in x)
        assert f"{row['knn_purity']:.4f}" in line and f"{row['knn_purity_chance']:.4f}" in line
    assert "have not been analysed" not in out


def test_a_selection_file_is_removed_in_the_first_round(demo_sandbox, tmp_path: Path):
    result, cfg = demo_sandbox
    start = hm.analyse(cfg, PEEL, embeddings=result["infer"].run_id)
    selection = tmp_path / "selected.csv"
    pd.DataFrame({"object_id": ["XDF00001", "XDF00002", "XDF00007"]}).to_csv(selection,
                                                                              index=False)
    peel = hm.peel(cfg, PEEL, analyse=start.run_id, remove=str(selection))
    rounds = table(peel.run_id, "peel/rounds.csv")
    assert list(rounds["removed"]) == [3] and rounds["reason"][0] == "selection file"
    ids = set(table(rounds["dataset"][0], "dataset/catalog.parquet")["object_id"])
    assert len(ids) == 297 and not ids & {"XDF00001", "XDF00002", "XDF00007"}


def test_the_pipeline_can_end_with_an_analysis(demo_sandbox):
    result, cfg = demo_sandbox
    again = hm.pipeline(cfg, {"pipeline.analyse": True})
    for stage in ("dataset", "train", "infer", "reduce"):
        assert again[stage].reused and again[stage].run_id == result[stage].run_id
    analysed = mlflow.get_run(again["analyse"].run_id)
    # the index comes after analyse now: its vectors joined with the analysis's statistics
    index = mlflow.get_run(again["index"].run_id)
    assert not again["index"].reused and again["index"].run_id != result["index"].run_id
    assert index.data.tags["hyrax.input.statistics"] == analysed.info.run_id
    assert index.data.tags["hyrax.index.vectors"] == "joined"
    assert list(again.stages) == ["dataset", "train", "infer", "reduce", "analyse", "index"]
    assert analysed.data.tags["hyrax.input.map"] == result["reduce"].run_id
    assert analysed.data.tags["mlflow.parentRunId"] == again.run_id
    assert mlflow.get_run(again.run_id).data.tags["hyrax.stage_run.analyse"] == analysed.info.run_id
