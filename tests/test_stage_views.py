"""A stage's body sees only the config sections it declares (its SECTIONS, which its runs'
identity hashes) and where runs go (tracking, ray): reading any other key is an error that
names the key and the stage, so a stage cannot be reused when a setting it reads changed."""

from __future__ import annotations

import textwrap

import mlflow
import pytest
import tomllib

import hyrax_mlops as hm
from hyrax_mlops.config import UndeclaredConfigError, with_overrides
from hyrax_mlops.stages.registry import STAGES, Stage
from hyrax_mlops.stages.resolve import Resolver
from hyrax_mlops.tracking import CONFIG_ARTIFACT


def test_a_view_shows_the_declared_sections_and_keys_only():
    cfg = hm.load_config(None, {"train.epochs": 7})
    view = cfg.only(("reduce", "data.mode"), "reduce")
    assert view.reduce == cfg.reduce and view.data.mode == "dataset"
    assert view.tracking == cfg.tracking and view.ray == cfg.ray  # where runs go
    with pytest.raises(UndeclaredConfigError, match=r"stage 'reduce' read config key "
                       r"'train\.epochs' but declares only reduce, data\.mode: add 'train' "
                       r"\(or 'train\.epochs'\) to its SECTIONS"):
        view.train.epochs  # noqa: B018 - the read is the test
    with pytest.raises(UndeclaredConfigError, match=r"'data\.normalize'"):
        view.data.normalize  # noqa: B018 - one key of a section declares that key only
    # what the run logs is what it reads; its identity is the same as the whole config's
    assert tomllib.loads(view.to_toml()) == {
        "reduce": cfg.reduce.model_dump(mode="json"), "data": {"mode": "dataset"},
        "tracking": cfg.tracking.model_dump(mode="json"), "ray": cfg.ray.model_dump(mode="json")}
    assert view.section_hash(("reduce",)) == cfg.section_hash(("reduce",))
    assert view.flat(("reduce",)) == cfg.flat(("reduce",))
    # a view changed by an override stays a view of the same stage
    changed = with_overrides(view, {"reduce.methods": ["pca"]})
    assert changed.reduce.methods == ["pca"]
    with pytest.raises(UndeclaredConfigError, match="'train.epochs'"):
        changed.train.epochs  # noqa: B018


LEAKY = """
    from hyrax_mlops.tracking import StageSpec, run_stage

    SECTIONS = ("reduce",)

    def check(cfg):
        pass

    def run(cfg, *, force=False, parent_run_id=None):
        def body(run_id):
            print(cfg.train.epochs)  # not declared: the runs would be reused when it changes
        return run_stage(StageSpec("leaky", SECTIONS), cfg, body, force=force)
"""


def test_a_stage_reading_a_section_it_did_not_declare_fails_and_its_run_says_why(
        store, tmp_path, monkeypatch):
    (tmp_path / "leaky_stage.py").write_text(textwrap.dedent(LEAKY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(STAGES._items, "leaky", Stage("leaky", "leaky_stage"))
    with pytest.raises(UndeclaredConfigError, match=r"stage 'leaky' read config key "
                                                    r"'train\.epochs'"):
        Resolver(hm.load_config()).make("leaky")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"  # recorded, nothing left RUNNING
    assert "train.epochs" in run.data.tags["hyrax.error"]


def test_each_stage_logs_the_sections_it_reads(demo_store):
    """What a user opens in MLflow (the run's config.toml) is what the stage could read."""
    result, _ = demo_store
    expected = {"dataset": {"download", "data", "tracking", "ray"},
                "infer": {"infer", "tracking", "ray"},
                "reduce": {"reduce", "tracking", "ray"},
                "train": {"data", "model", "train", "tracking", "ray"}}
    for stage, sections in expected.items():
        text = mlflow.artifacts.load_text(f"runs:/{result[stage].run_id}/{CONFIG_ARTIFACT}")
        logged = tomllib.loads(text)
        assert set(logged) == sections, stage
    download = tomllib.loads(mlflow.artifacts.load_text(
        f"runs:/{result['dataset'].run_id}/{CONFIG_ARTIFACT}"))
    assert download["data"] == {"mode": "dataset"}  # the one key of [data] it declares
