"""A third-party plugin package (tests/plugins, installed by `make test` through its entry
points) adds a source, a model and an analysis, each with its own config keys: the config
checks those keys when it loads, `hyrax-mlops list` shows the plugins, and a pipeline runs
on them with what they declared."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import mlflow
import numpy as np
import pandas as pd
import pytest

import hyrax_mlops as hm
from hyrax_mlops.cli import main
from hyrax_mlops.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def installed():
    try:
        version("hyrax-example-plugins")
    except PackageNotFoundError:
        pytest.fail("the example plugins are not installed: `make test` installs them "
                    "(pip install -e tests/plugins)")


def test_list_shows_the_plugins_beside_the_built_ins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, name in (("sources", "example_tiles"), ("models", "example_linear_ae"),
                       ("analyses", "example_edges")):
        line = next(x for x in out.splitlines() if x.startswith(kind))
        assert name in line


@pytest.mark.parametrize("overrides, message", [
    ({"download.example_tiles.step": 4},
     "config key 'download.example_tiles.step' (example_tiles): Input should be greater than "
     "or equal to 8"),
    ({"download.example_tiles.stepp": 64},
     "unknown config key 'download.example_tiles.stepp' (example_tiles has no such key)"),
    ({"analyse.edge_margn": 2},
     "unknown config key 'analyse.edge_margn'. Did you mean 'analyse.edge_margin'?"),
    ({"analyse.edge_threshold": 2.0},
     "config key 'analyse.edge_threshold' (example_edges): Input should be less than or equal "
     "to 1"),
    ({"model.name": "example_linear_ae", "model.hiden": 8},
     "unknown config key 'model.hiden' for model 'example_linear_ae'. Did you mean "
     "'model.hidden'?"),
])
def test_a_plugin_s_keys_are_checked_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError) as err:
        hm.load_config(None, overrides)
    assert message in str(err.value)


def test_a_pipeline_runs_on_the_plugins_with_their_own_keys(store):
    cfg = hm.load_config(None, {
        "tracking.experiment": "plugins", "download.source": "example_tiles",
        "download.stamp_size": 32, "download.limit": 60, "download.example_tiles.step": 80,
        "model.name": "example_linear_ae", "model.hidden": 32, "model.latent_dim": 4,
        "train.epochs": 1, "reduce.methods": ["pca"], "reduce.color_by": "flux",
        "pipeline.analyse": True, "analyse.analyses": ["outliers", "example_edges"],
        "analyse.edge_margin": 3, "analyse.edge_threshold": 0.3})
    result = hm.pipeline(cfg)
    dataset = mlflow.artifacts.download_artifacts(run_id=result["dataset"].run_id,
                                                  artifact_path="dataset")
    catalog = pd.read_parquet(f"{dataset}/catalog.parquet")
    assert len(catalog) == 60 and catalog["object_id"].str.startswith("TILE").all()
    # every tile corner on the plugin's own grid: step 80 from its key, not the default 96
    corners = (catalog[["x", "y"]].to_numpy() - 16).astype(int)
    assert (corners % 80 == 0).all()

    analysed = mlflow.get_run(result["analyse"].run_id)
    assert analysed.data.params["analyse.edge_margin"] == "3"
    columns = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=analysed.info.run_id, artifact_path="analysis/columns.parquet"))
    assert {"edge_fraction", "is_edge", "outlier_score"} <= set(columns.columns)
    flagged = int(columns["is_edge"].sum())
    assert analysed.data.metrics["example_edges.n_flagged"] == flagged
    share = columns["edge_fraction"]
    assert share.min() >= 0 and share.max() <= 1 and share.nunique() > 30
    # the plugin's threshold key splits the objects where the config put it
    assert (columns["is_edge"] == (share >= 0.3)).all()
    trained = mlflow.get_run(result["train"].run_id)
    assert trained.data.params["model.name"] == "example_linear_ae"
    assert trained.data.params["model.hidden"] == "32"
    assert np.isfinite(trained.data.metrics["best_val_loss"])


TINY_MODEL = """
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    def __init__(self, input_shape, latent_dim: int = 4):
        super().__init__()
        n = 1
        for d in input_shape:
            n *= d
        self.shape = tuple(input_shape)
        self.enc, self.dec = nn.Sequential(nn.Flatten(), nn.Linear(n, latent_dim)), \\
            nn.Linear(latent_dim, n)

    def training_step(self, batch):
        x = batch["image"]
        return F.mse_loss(self.dec(self.enc(x)).view(-1, *self.shape), x)

    def embed(self, batch):
        return self.enc(batch["image"])
"""


def test_editing_code_outside_the_package_re_runs_what_uses_it(store, tmp_path, monkeypatch):
    """A user model named by import path (a plugin likewise) is part of the train run's code
    version: the same config reuses the run, an edit to the model's file re-trains."""
    (tmp_path / "my_tiny_model.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    over = {"tracking.experiment": "outside", "download.limit": 40, "train.epochs": 1,
            "model.name": "my_tiny_model:Tiny"}
    first = hm.train(None, over)
    assert hm.train(None, over).reused
    (tmp_path / "my_tiny_model.py").write_text(TINY_MODEL + "\n# a tuned comment\n")
    again = hm.train(None, over)
    assert not again.reused
    versions = [mlflow.get_run(r.run_id).data.tags["hyrax.code_version"] for r in (first, again)]
    assert all("+ext." in v for v in versions) and versions[0] != versions[1]


def test_an_analysis_that_cannot_take_the_context_is_refused_before_any_run(store):
    from hyrax_mlops.analysis.analyses import ANALYSES

    def wrong(cfg, out_dir, ctx):  # a source's signature, given to an analysis
        raise AssertionError("never called")

    ANALYSES.register("example_wrong_signature")(wrong)
    try:
        with pytest.raises(ConfigError, match=r"analysis 'example_wrong_signature' \(.*wrong\) "
                                              r"cannot be called as analysis\(ctx\)"):
            hm.analyse(None, {"analyse.analyses": ["example_wrong_signature"],
                              "download.limit": 20})
        assert mlflow.search_runs(search_all_experiments=True).empty
    finally:
        ANALYSES._items.pop("example_wrong_signature")
