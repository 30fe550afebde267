"""Config: defaults, overrides from every door, and errors that name the key and the fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import hyrax_mlops as hm
from hyrax_mlops.cli import main
from hyrax_mlops.config import load_config, with_overrides
from hyrax_mlops.errors import ConfigError

MULTIMODAL = Path(__file__).parent / "data" / "multimodal"


def test_defaults_validate_and_overrides_apply_from_every_form(tmp_path):
    cfg = load_config()
    assert cfg.train.epochs == 20 and cfg.model.name == "conv_autoencoder"
    user = tmp_path / "hyrax.toml"
    user.write_text('[train]\nepochs = 7\n[model]\nlatent_dim = 8\n')
    assert load_config(user).train.epochs == 7
    assert load_config(user).model.params() == {"latent_dim": 8}
    as_dict = load_config(user, {"train.epochs": 3, "reduce.dims": [2]})
    as_list = load_config(user, ["train.epochs=3", "reduce.dims=[2]"])
    as_text = load_config(user, "train.epochs=3 reduce.dims=[2]")
    for cfg in (as_dict, as_list, as_text):
        assert cfg.train.epochs == 3 and cfg.reduce.dims == [2]
        assert cfg.train.lr == 0.002  # untouched keys keep the shipped default
    assert load_config(None, ["ingest.cutouts_dir=/data/my cutouts"]).ingest.cutouts_dir == \
        "/data/my cutouts"
    # what a shell leaves of ['umap','pca'] still means a list of names
    assert load_config(None, "reduce.methods=[umap,pca]").reduce.methods == ["umap", "pca"]


def test_misspelt_key_in_file_names_key_and_closest(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "'train.epoch'" in str(err.value) and "Did you mean 'train.epochs'" in str(err.value)


def test_misspelt_table_and_wrong_type_in_overrides():
    with pytest.raises(ConfigError, match=r"'trian'.*Did you mean 'train'"):
        load_config(None, {"trian.epochs": 5})
    with pytest.raises(ConfigError, match=r"'train.epochs'.*'five'"):
        load_config(None, ["train.epochs=five"])
    with pytest.raises(ConfigError, match=r"'data.normalize'"):
        load_config(None, {"data.normalize": "sqrt"})
    with pytest.raises(ConfigError, match="must not hold credentials"):
        load_config(None, {"index.url": "http://user:secret@127.0.0.1:8000"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_model_arguments_are_checked_against_the_model_signature():
    from hyrax_mlops.models import model_params

    # a registered model's arguments are checked when the config loads
    with pytest.raises(ConfigError, match=r"'model.latent_dimm'.*Did you mean 'model.latent_dim'"):
        load_config(None, {"model.latent_dimm": 8})
    with pytest.raises(ConfigError, match=r"no model named 'conv_autoencodr'.*conv_autoencoder"):
        load_config(None, {"model.name": "conv_autoencodr"})
    # a model named by import path, when it is built
    with pytest.raises(ConfigError, match="cannot be imported"):
        model_params(load_config(None, {"model.name": "no_such_pkg.mod:Model"}).model)


@pytest.mark.parametrize("argv, message", [
    (["pipeline", "--set", "train.epoch=5"], "train.epoch"),
    (["train", "--set", "model.widht=[8]"], "model.widht"),
    (["pipeline", "--set", "index.backend=faiss"], "no vector_backend named 'faiss'"),
    (["pipeline", "--set", "reduce.methods=['umap','isomap']"], "no reducer named 'isomap'"),
    (["ingest", "--set", "ingest.cutouts_dir=/nowhere", "--set", "ingest.catalog=/none.csv"],
     "ingest.cutouts_dir"),
    (["pipeline", "--set", "pipeline.dataset=ingest"], "ingest.catalog' is required"),
    (["analyse", "--set", "analyse.analyses=[outliers,clustres]"],
     "no analysis named 'clustres'. Did you mean 'clusters'? Registered: clusters, crossmatch, "),
    # a catalog-only dataset of the user's own, with no label column quality could fall back on
    (["analyse", "--set", "analyse.analyses=[quality]", "--set", "pipeline.dataset=ingest",
      "--set", f"ingest.catalog={MULTIMODAL / 'objects.csv'}"],
     "analyse.label_column' is required"),
    (["analyse", "--set", "analyse.analyses=[crossmatch]"], "analyse.reference' is required"),
    (["analyse", "--set", "analyse.analyses=[quality]", "--set", "analyse.label_column=ref_label"],
     "list \"crossmatch\" before \"quality\""),
])
def test_cli_fails_before_any_run_exists(store, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    db = store / "mlflow.db"
    if db.exists():  # the store may exist, but it holds no run
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0


def test_resolved_config_round_trips(tmp_path):
    cfg = hm.load_config(None, {"model.latent_dim": 12, "reduce.dims": [3]})
    path = tmp_path / "resolved.toml"
    path.write_text(cfg.to_toml())
    again = load_config(path)
    assert again == cfg
    assert again.section_hash(["reduce"]) == cfg.section_hash(["reduce"])
    assert again.section_hash(["reduce"]) != load_config().section_hash(["reduce"])


@pytest.mark.parametrize(("override", "expected"), [
    ({"data.spectrum_grid": [3500.0, 10500.0]}, "spectrum_grid must be \\[min Å, max Å, pixels\\]"),
    ({"data.spectrum_grid": [9000.0, 4000.0, 256]}, "0 < min < max"),
    ({"data.features": ["A_1", "sqrt:P_1"]}, "'sqrt:P_1'.*only transform is log10"),
])
def test_modality_settings_are_checked_when_the_config_loads(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, override)


@pytest.mark.parametrize("key, value, message", [
    ("index.backend", "chromaa", "no vector_backend named 'chromaa'. Did you mean 'chroma'?"),
    ("download.source", "hcs", "no source named 'hcs'. Did you mean 'hsc'?"),
    ("model.name", "simclrr", "no model named 'simclrr'. Did you mean 'simclr'?"),
    ("reduce.methods", ["pca", "umapp"], "no reducer named 'umapp'. Did you mean 'umap'?"),
    ("analyse.analyses", ["outlier"], "no analysis named 'outlier'. Did you mean 'outliers'?"),
])
def test_a_name_nothing_is_registered_under_fails_when_the_config_loads(key, value, message,
                                                                        capsys):
    """Registered names are checked by load_config itself, so even `hyrax-mlops config` (which
    runs no stage) refuses them, naming the key and what is registered."""
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    assert f"config key '{key}': {message}" in str(err.value)
    assert "Registered: " in str(err.value)
    assert main(["config", "--set", f"{key}={value!r}".replace("'", '"')]) == 2
    assert message in capsys.readouterr().err
    assert load_config(None, {"model.name": "user_models:Tiny"})  # an import path: later


def test_each_component_owns_its_keys_and_defaults():
    """The backend's keys are its own (the selected one's only); every analysis's keys are
    accepted and checked by their owner; a source's sit in its table. defaults.toml shows the
    same defaults the components declare (the index's as comments: only one backend's keys
    may be set)."""
    import re

    import tomllib

    from hyrax_mlops.analysis.analyses import ANALYSES
    from hyrax_mlops.config import default_config_text
    from hyrax_mlops.sources import SOURCES
    from hyrax_mlops.vectors import VECTOR_BACKENDS

    cfg = load_config()
    assert (cfg.index.ef_search, cfg.download.rubin.butler_repo, cfg.analyse.quality_k) == \
        (200, "", 10)
    lance = load_config(None, {"index.backend": "lancedb", "index.nprobes": 7})
    assert lance.index.nprobes == 7 and not hasattr(lance.index, "ef_search")
    with pytest.raises(ConfigError, match="'index.nprobes' is a key of backend 'lancedb', not "
                                          "of 'chroma'"):
        load_config(None, {"index.nprobes": 7})
    # another backend by override on a loaded config: the old one's keys do not follow it
    switched = with_overrides(load_config(None, {"index.ef_search": 50}),
                              {"index.backend": "lancedb"})
    assert switched.index.nprobes == 10 and not hasattr(switched.index, "ef_search")
    with pytest.raises(ConfigError, match=r"config key 'analyse' \(clusters\): cluster_on = "
                                          r"\"catalog\" needs analyse.cluster_columns"):
        load_config(None, {"analyse.cluster_on": "catalog"})

    text = default_config_text()
    shipped = tomllib.loads(text)
    for name in ANALYSES.names():
        own = getattr(ANALYSES.get(name), "config_class", None)
        for key, field in (own.model_fields.items() if own else ()):
            if key in shipped["analyse"]:  # a plugin's keys are not in the shipped file
                assert shipped["analyse"][key] == field.default, key
    for name in ("hsc", "rubin", "euclid", "xdf"):
        assert shipped["download"][name] == SOURCES.get(name).config_class().model_dump()
    from hyrax_mlops.analysis.reducers import REDUCERS

    umap_keys = REDUCERS.get("umap").config_class().model_dump()
    assert {k: shipped["reduce"][k] for k in umap_keys} == umap_keys

    index_block = text.split("[index]")[1].split("\n[")[0]
    commented = dict(re.findall(r"^#\s+(\w+) = (\S+)", index_block, re.M))
    for name in ("chroma", "lancedb", "qdrant"):
        for key, field in VECTOR_BACKENDS.get(name).config_class.model_fields.items():
            assert tomllib.loads(f"v = {commented[key]}")["v"] == field.default, key


def test_a_component_key_left_at_the_top_of_its_section_says_where_it_moved():
    """XDF's detection keys moved into [download.xdf]: an old config says so, and the keys
    of a reducer (UMAP's) are its own, checked by it, where they always were."""
    with pytest.raises(ConfigError, match=r"'download.min_area' is now "
                                          r"'download.xdf.min_area': move it into the "
                                          r"\[download.xdf\] table"):
        load_config(None, {"download.min_area": 5})
    assert load_config(None, {"download.xdf.min_area": 5}).download.xdf.min_area == 5
    assert load_config(None, {"reduce.umap_n_neighbors": 30}).reduce.umap_n_neighbors == 30
    with pytest.raises(ConfigError, match=r"config key 'reduce.umap_n_neighbors' \(umap\): "
                                          r"Input should be greater than or equal to 2"):
        load_config(None, {"reduce.umap_n_neighbors": 1})
    with pytest.raises(ConfigError, match="Did you mean 'reduce.umap_min_dist'"):
        load_config(None, {"reduce.umap_min_dst": 0.2})


def test_messages_name_the_full_key_even_when_a_section_was_built_on_its_own_first():
    """A backend's config built directly (as a script or a benchmark does) before the first
    load_config must not leave later messages without their section's prefix."""
    import subprocess
    import sys

    code = ("from hyrax_mlops.config import IndexConfig, load_config\n"
            "IndexConfig(backend='lancedb')\n"
            "try:\n    load_config(None, {'index.nprobes': 7})\n"
            "except Exception as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "'index.nprobes' is a key of backend 'lancedb', not of 'chroma'" in out, out
