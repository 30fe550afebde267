"""The one resolver behind every door: which stages a call makes or reuses (from the
registry's input rules), every check of those stages before the first run exists, and the
inputs a call can name."""

from __future__ import annotations

import mlflow
import pytest

import hyrax_mlops as hm
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.stages.resolve import Resolver, make


def plan(stage: str, overrides: dict | None = None, **given: str) -> list[str]:
    return Resolver(hm.load_config(None, overrides)).plan(stage, given)


def test_a_call_plans_the_stages_its_missing_inputs_need():
    assert plan("index") == ["download", "train", "infer", "index"]
    assert plan("index", embeddings="RUN") == ["index"]
    assert plan("reduce", {"pipeline.dataset": "ingest"}) == ["ingest", "train", "infer",
                                                                "reduce"]
    # a registered model needs no training: infer embeds the model's own dataset
    assert plan("reduce", {"infer.model": "models:/galaxies/1"}) == ["infer", "reduce"]
    # analyse clusters on the config's map only when asked to
    assert plan("analyse", embeddings="RUN") == ["analyse"]
    assert plan("analyse", {"analyse.cluster_on": "map"}, embeddings="RUN") == ["reduce",
                                                                                 "analyse"]
    assert plan("train", dataset="RUN") == ["train"]
    assert plan("pipeline") == ["pipeline"]  # its own check plans every stage it runs


def test_pinned_inputs_reach_every_stage_that_takes_them():
    resolver = Resolver(hm.load_config(), pinned={"dataset": "FILTERED"})
    assert resolver.plan("analyse") == ["train", "infer", "analyse"]  # no download


def test_every_planned_stage_is_checked_before_the_first_run(store):
    # the map analyse would cluster needs a reducer that does not exist: found before the
    # dataset, the model or the embeddings are made
    with pytest.raises(ConfigError, match=r"reduce\.methods.*nope.*umap"):
        hm.analyse(None, {"analyse.cluster_on": "map", "reduce.methods": ["nope"],
                          "download.limit": 20})
    # a catalog column the config names, against the dataset about to be made
    with pytest.raises(ConfigError, match="Did you mean 'flux'"):
        hm.reduce(None, {"index.metadata_columns": ["fluxx"], "download.limit": 20})
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_call_names_only_the_inputs_its_stage_takes():
    with pytest.raises(TypeError, match="stage 'reduce' takes no input map; its inputs: "
                                        "embeddings"):
        make("reduce", hm.load_config(), map="RUN")
