"""What a user sees on the terminal: each stage's summary and next step, run names that say what
a run is, registered names in --help and `list KIND`, an early stop that closes its bar, and no
library noise (artifact progress bars, MLflow's type-hint warning)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
import torch

from hyrax_mlops.cli import main
from hyrax_mlops.config import TrainConfig
from hyrax_mlops.engine.loop import fit

from conftest import DEMO_OVERRIDES, N_DEMO

NOISE = ("Downloading artifacts", "Add type hints", "Inferred schema", "Inferring model signature",
         "\x1b[")
DEMO_SET = [a for k, v in DEMO_OVERRIDES.items()
            for a in ("--set", f"{k}={v}".replace("'", '"').replace(" ", ""))]


def test_list_takes_a_kind_and_help_lists_the_registered_names(capsys):
    assert main(["list", "sources"]) == 0
    assert {"xdf", "hsc", "rubin"} <= set(capsys.readouterr().out.split())
    assert main(["list", "backends"]) == 0
    assert "chroma" in capsys.readouterr().out.split()
    assert main(["list", "colours"]) == 2
    assert "one of sources, models" in capsys.readouterr().err
    for command, key, name in (("download", "download.source", "xdf"),
                               ("index", "index.backend", "chroma"),
                               ("reduce", "reduce.methods", "umap"),
                               ("train", "model.name", "conv_autoencoder")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        line = next(ln for ln in out.splitlines() if f"({key}):" in ln)
        assert name in line.split(": ", 1)[1].split(", ")


def test_the_pipeline_prints_each_stage_with_its_name_summary_and_next_steps(demo_sandbox,
                                                                             capsys):
    result, cfg = demo_sandbox
    names = {"dataset": "download-xdf-n300", "train": "train-conv_autoencoder-ld16-e3",
             "infer": "infer-conv_autoencoder-ld16-e3", "index": "index-chroma-cosine",
             "reduce": "reduce-umap+pca"}
    for stage, name in names.items():  # the names in the store
        assert mlflow.get_run(result[stage].run_id).info.run_name == name
    assert mlflow.get_run(result.run_id).info.run_name == "pipeline-xdf-conv_autoencoder-ld16-e3"

    assert main(["pipeline", *DEMO_SET]) == 0  # every stage reused: the same summaries
    out = capsys.readouterr().out
    lines = out.splitlines()
    for stage, name in names.items():  # (other tests may force newer index/reduce runs)
        stage_word = "download" if stage == "dataset" else stage
        head = f"{stage_word:<9} reused  {name}  run "
        shown = [ln for ln in lines if ln.startswith(head)]
        assert len(shown) == 1, out
        if stage in ("dataset", "train", "infer"):
            assert shown[0] == head + result[stage].run_id
    summary = {ln.split()[0]: lines[i + 1].strip() for i, ln in enumerate(lines[:-1])
               if ln.split() and ln.split()[0] in ("download", "train", "infer", "index",
                                                    "reduce")}
    assert summary["download"] == f"xdf: {N_DEMO} of {N_DEMO} objects, stamps 3x64x64 (R,G,B); " \
                                  "failed: 0"
    assert summary["train"].startswith("epochs: 3 of 3; best: epoch ")
    assert "val_loss" in summary["train"] and "model: models:/" in summary["train"]
    rate = mlflow.get_run(result["infer"].run_id).data.metrics["samples_per_s"]
    assert summary["infer"] == f"{N_DEMO} objects embedded, dim 16 (embeddings.parquet), " \
                               f"{round(rate):,} objects/s"
    assert summary["index"].startswith(f"{N_DEMO} vectors in chroma (cosine); recall@10 ")
    assert summary["reduce"].startswith(f"maps: PCA 2D, PCA 3D, UMAP 2D, UMAP 3D of {N_DEMO} "
                                        "objects; open: reductions.html")
    assert out.count(" reused ") == 5
    index_id = next(ln for ln in lines if ln.startswith("index ")).split()[-1]
    assert f"hyrax-mlops search --run {index_id} --id XDF" in out
    eid = mlflow.get_run(result.run_id).info.experiment_id  # a link that opens on the runs
    assert f"http://127.0.0.1:5000/#/experiments/{eid}?workflowType=machine_learning" in out


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    """A command as a user runs it, with no MLflow settings of ours in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_ENABLE_")}
    env["COLUMNS"] = "120"
    return subprocess.run([sys.executable, "-m", "hyrax_mlops.cli", *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=300)


def test_train_and_infer_print_their_summary_and_no_library_noise(demo_sandbox):
    result, cfg = demo_sandbox
    here = os.getcwd()
    train = _cli(["train", "--dataset", result["dataset"].run_id, *DEMO_SET,
                  "--set", "train.epochs=1", "--set", "train.lr=0.001"], here)
    assert train.returncode == 0, train.stderr[-3000:]
    lines = train.stdout.splitlines()
    assert lines[0].startswith("train     ran     train-conv_autoencoder-ld16-e1-lr0.001  run ")
    run_id = lines[0].split()[-1]
    assert mlflow.get_run(run_id).info.run_name == "train-conv_autoencoder-ld16-e1-lr0.001"
    assert lines[1] == "  epochs: 1 of 1"
    assert lines[2].startswith("  best: epoch 0 (of 0..0), val_loss ")
    assert f"  next: hyrax-mlops infer --train-run {run_id}" in lines

    infer = _cli(["infer", "--train-run", result["train"].run_id, "--force", *DEMO_SET], here)
    assert infer.returncode == 0, infer.stderr[-3000:]
    metrics = mlflow.get_run(infer.stdout.split()[4]).data.metrics
    assert metrics["embed_seconds"] > 0 and metrics["samples_per_s"] == pytest.approx(
        N_DEMO / metrics["embed_seconds"])
    assert infer.stdout.splitlines()[1] == f"  {N_DEMO} objects embedded, dim 16 " \
        f"(embeddings.parquet), {round(metrics['samples_per_s']):,} objects/s"
    for proc in (train, infer):
        for noise in NOISE:
            assert noise not in proc.stdout + proc.stderr, (noise, proc.stderr[-2000:])
    assert "train: 100%" in train.stderr  # our own progress bars stay


class _Still(torch.nn.Module):
    """A real (tiny) model whose loss cannot improve: early stopping must end it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def training_step(self, batch):
        return ((batch["x"] * self.w) ** 2).mean()


def test_an_early_stop_closes_the_bar_at_that_epoch_with_the_best_one(tmp_path, capsys):
    x = torch.ones(8, 4)
    loader = [{"x": x}]
    cfg = TrainConfig(epochs=10, lr=1e-20, early_stopping_patience=2)
    result = fit(_Still(), loader, loader, cfg, tmp_path / "best.pt")
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 0
    err = capsys.readouterr().err
    last_bar = err.replace("\r", "\n").strip().splitlines()[-2]
    assert last_bar.startswith("train (stopped early): 100%") and "3/3" in last_bar
    assert err.strip().splitlines()[-1] == (
        "[hyrax] train: stopped early after 3 of 10 epochs (no val_loss improvement in 2); "
        "best epoch 0 (of 0..2), val_loss 1")


def test_peel_prints_the_run_ids_of_each_round_and_a_compare_line(demo_sandbox, capsys):
    result, cfg = demo_sandbox
    import hyrax_mlops as hm

    over = {"analyse.analyses": ["outliers"], "analyse.top_fraction": 0.05}
    start = hm.analyse(cfg, over, embeddings=result["infer"].run_id)
    capsys.readouterr()
    assert main(["peel", "--analyse", start.run_id, *DEMO_SET,
                 "--set", 'analyse.analyses=["outliers"]',
                 "--set", "analyse.top_fraction=0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("peel      ran     peel-1r-outliers  run ")
    peel_id = lines[0].split()[-1]
    tags = mlflow.get_run(peel_id).data.tags
    train_id, analyse_id = tags["hyrax.peel.round1.train"], tags["hyrax.peel.round1.analyse"]
    assert f"  round 1: train {train_id}  analyse {analyse_id}  (removed 15)" in lines
    assert f"  compare the rounds: hyrax-mlops compare {start.run_id} {analyse_id}" in lines
    assert mlflow.get_run(train_id).info.run_name == "train-conv_autoencoder-ld16-e3-peel1"
    assert main(["compare", start.run_id, analyse_id]) == 0  # the line works as printed


def test_ingest_prints_its_counts_and_failures_by_reason(store, capsys):
    """A user's folder with 12 real stamps, one corrupt, one cropped and one catalog row whose
    file is missing: the summary counts them by reason; `list` names the run."""
    import shutil

    import pandas as pd
    from astropy.io import fits

    from conftest import DATA

    stamps = DATA / "xdf_fits" / "stamps"
    cut = store / "cutouts"
    shutil.copytree(stamps, cut)
    (cut / "BROKEN.fits").write_bytes((stamps / "XDF00001.fits").read_bytes()[:3000])
    fits.PrimaryHDU(fits.getdata(stamps / "XDF00002.fits")[:, :32, :32]).writeto(
        cut / "CROPPED.fits")
    catalog = pd.read_csv(DATA / "xdf_fits" / "catalog.csv")[["object_id", "flux"]]
    extra = pd.DataFrame({"object_id": ["BROKEN", "CROPPED", "GONE"], "flux": [1.0, 2.0, 3.0]})
    pd.concat([catalog, extra]).to_csv(store / "catalog.csv", index=False)
    assert main(["ingest", "--set", "ingest.cutouts_dir=cutouts",
                 "--set", "ingest.catalog=catalog.csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ingest    ran     ingest-cutouts-catalog  run ")
    assert lines[1] == "  12 of 15 objects, stamps 3x64x64 (band0,band1,band2)"
    assert lines[2].startswith("  failed: 3 (")
    reasons = dict(part.rsplit(" ", 1) for part in lines[2][len("  failed: 3 ("):].split(")")[0]
                   .split(", "))
    assert reasons == {"unreadable": "1", "wrong_shape": "1", "missing_file": "1"}, lines[2]
    assert lines[-1] == f"  next: hyrax-mlops train --dataset {lines[0].split()[-1]}"
