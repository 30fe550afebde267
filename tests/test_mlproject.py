"""The MLflow Projects door: `mlflow run . -e NAME --env-manager local` runs the same code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_mlflow_run_entry_points_share_runs_and_cache(store):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}")
    small = (f"download.limit=40 train.epochs=1 model.widths=[8,8] model.latent_dim=4 "
             f"reduce.methods=['pca'] tracking.cache_dir={store / 'cache'} "
             f"index.path={store / 'chroma'}")

    def mlflow_run(entry: str, overrides: str, **inputs: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry,
               "--env-manager", "local", "--experiment-name", "projects",
               "-P", f"overrides={overrides}", *(a for k, v in inputs.items()
                                                 for a in ("-P", f"{k}={v}"))]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    done = mlflow_run("pipeline", small)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["projects"])
    assert (runs["status"] == "FINISHED").all()
    launcher = runs[runs["tags.hyrax.stage"] == "pipeline"]
    assert len(launcher) == 1  # the run `mlflow run` made is the pipeline's parent run
    stages = runs[runs["tags.mlflow.parentRunId"] == launcher["run_id"].iloc[0]]
    assert sorted(stages["tags.hyrax.stage"]) == ["download", "index", "infer", "reduce",
                                                  "train"]

    again = mlflow_run("download", small)  # same config: reused, and the launch says so
    assert again.returncode == 0 and "reusing finished run" in again.stderr
    runs = mlflow.search_runs(experiment_names=["projects"], order_by=["start_time DESC"])
    download = stages[stages["tags.hyrax.stage"] == "download"]["run_id"].iloc[0]
    assert runs.iloc[0]["tags.hyrax.launcher_for"] == download

    trained = mlflow_run("train", small.replace("train.epochs=1", "train.epochs=2"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    newest = mlflow.search_runs(experiment_names=["projects"],
                                order_by=["start_time DESC"]).iloc[0]
    # the launch is the new train run itself, fed by the cached dataset
    assert newest["tags.hyrax.stage"] == "train" and newest["params.train.epochs"] == "2"
    assert newest["tags.hyrax.input.dataset"] == download

    bad = mlflow_run("download", "download.limt=20")
    assert bad.returncode != 0 and "download.limt" in bad.stderr and "Did you mean" in bad.stderr

    # an input run passed through the door: reduce the pipeline's embeddings with other
    # settings; nothing upstream is made again
    infer = stages[stages["tags.hyrax.stage"] == "infer"]["run_id"].iloc[0]
    reduced = mlflow_run("reduce", "reduce.methods=['pca'] reduce.dims=[2] "
                                   f"tracking.cache_dir={store / 'cache'}", embeddings=infer)
    assert reduced.returncode == 0, reduced.stderr[-3000:]
    newest = mlflow.search_runs(experiment_names=["projects"],
                                order_by=["start_time DESC"]).iloc[0]
    assert newest["tags.hyrax.stage"] == "reduce" and newest["params.reduce.dims"] == "[2]"
    assert newest["tags.hyrax.input.embeddings"] == infer


def test_mlproject_entry_points_are_the_stage_registry():
    """MLproject is written from the registry; every door takes every input of every stage."""
    import inspect

    import hyrax_mlops as hm
    from hyrax_mlops.cli import build_parser
    from hyrax_mlops.config import Config
    from hyrax_mlops.stages.registry import STAGES, render_mlproject

    assert (REPO / "MLproject").read_text() == render_mlproject(), (
        "MLproject disagrees with hyrax_mlops/stages/registry.py: run "
        "`python -m hyrax_mlops.stages.registry > MLproject`")
    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in STAGES.names():
        stage = STAGES.get(name)
        names = [i.name for i in stage.inputs]
        assert set(spec[name]["parameters"]) == {"config", "overrides", "force", *names}
        door = inspect.signature(getattr(hm, name)).parameters
        flags = {o for a in commands[name]._actions for o in a.option_strings}
        for given in stage.inputs:
            assert given.name in door, (name, given.name)
            assert given.flag in flags, (name, given.flag)
        for entry in stage.sections:  # a section, or one key of one ("data.mode")
            section, _, key = entry.partition(".")
            assert section in Config.model_fields, (name, entry)
            assert not key or key in Config.model_fields[section].annotation.model_fields
    assert set(spec) == {*STAGES.names(), "app"}


def test_an_entry_point_passes_its_input_runs_to_the_cli():
    """`entrypoints/stage.py index --embeddings R --analysis A` is `hyrax-mlops index
    --embeddings R --analysis A`; empty parameters are left to the config."""
    from hyrax_mlops.cli import build_parser, entrypoint_argv

    argv = entrypoint_argv("index", ["--config", "", "--overrides", "index.metric=l2",
                                     "--force", "true", "--embeddings", "R1", "--analysis", ""])
    assert argv == ["index", "--embeddings", "R1", "--set", "index.metric=l2", "--force"]
    argv = entrypoint_argv("infer", ["--train_run", "T1", "--dataset", "D1"])
    assert argv == ["infer", "--train-run", "T1", "--dataset", "D1"]
    parsed = build_parser().parse_args(argv)
    assert (parsed.train_run, parsed.dataset) == ("T1", "D1")


def test_the_launcher_s_run_goes_to_the_first_requested_stage_only():
    """What `mlflow run` made is taken over once, by the stage the user asked for, never by a
    prerequisite made on the way; a block's own context leaves the process's untouched."""
    from hyrax_mlops import run_context

    process = run_context.current()
    with run_context.run_context("LAUNCH") as launch:
        assert run_context.current() is launch and process is not launch
        with run_context.upstream():
            assert launch.claim() is None  # a prerequisite: not its run
            with run_context.upstream():
                assert launch.claim() is None
        assert launch.upstream_depth == 0
        assert launch.claim() == "LAUNCH"  # the requested stage
        assert launch.claim() is None  # once
    assert run_context.current() is process and not process.claimed
