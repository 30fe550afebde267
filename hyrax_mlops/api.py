"""The Python door: `hm.train("hyrax.toml", overrides={"train.epochs": 5})`.

A stage called without its input run first makes (or reuses) the upstream stages under the
same config, like `make` (`stages.resolve`): `hm.reduce()` alone gives maps of the current
config's model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hyrax_mlops.config import Config, with_overrides
from hyrax_mlops.config import load_config as _load
from hyrax_mlops.run_context import upstream

ConfigLike = Config | str | Path | None
Overrides = Mapping[str, Any] | Iterable[str] | str | None


def load_config(config: ConfigLike = None, overrides: Overrides = None) -> Config:
    """Defaults < file < overrides, validated: a bad key fails here, before any run."""
    if isinstance(config, Config):
        return with_overrides(config, overrides)
    return _load(config, overrides)


def _make(stage: str, config: ConfigLike, overrides: Overrides, force: bool, **given):
    from hyrax_mlops.stages.resolve import make

    return make(stage, load_config(config, overrides), force=force, **given)


def __getattr__(name: str):
    """The door of a registered stage that has none written below (a new or a plugin's
    stage): `hm.<stage>(config, overrides, *, force=False, <input>=RUN_ID, ...)`."""
    import inspect

    from hyrax_mlops.stages.registry import STAGES

    if name.startswith("_") or name not in STAGES:
        raise AttributeError(f"module 'hyrax_mlops' has no attribute '{name}'")
    inputs = [i.name for i in STAGES.get(name).inputs]

    def door(config: ConfigLike = None, overrides: Overrides = None, *, force: bool = False,
             **given: str | None):
        unknown = sorted(set(given) - set(inputs))
        if unknown:
            raise TypeError(f"{name}() takes no input {', '.join(unknown)}; its inputs: "
                            f"{', '.join(inputs) or 'none'}")
        return _make(name, config, overrides, force, **given)

    p = inspect.Parameter
    door.__signature__ = inspect.Signature(
        [p("config", p.POSITIONAL_OR_KEYWORD, default=None),
         p("overrides", p.POSITIONAL_OR_KEYWORD, default=None),
         p("force", p.KEYWORD_ONLY, default=False),
         *(p(i, p.KEYWORD_ONLY, default=None) for i in inputs)])
    door.__name__ = door.__qualname__ = name
    door.__doc__ = f"Make or reuse the {name} stage (inputs: {', '.join(inputs) or 'none'})."
    return door


def download(config: ConfigLike = None, overrides: Overrides = None, *, force: bool = False,
             resume: str | None = None):
    """Download (or reuse) a dataset; `resume=RUN_ID` continues an interrupted download run in
    place, fetching only what it does not have yet."""
    return _make("download", config, overrides, force, resume=resume)


def ingest(config: ConfigLike = None, overrides: Overrides = None, *, force: bool = False):
    return _make("ingest", config, overrides, force)


def train(config: ConfigLike = None, overrides: Overrides = None, *,
          dataset: str | None = None, force: bool = False, resume: str | None = None):
    """Train (or reuse) a model; `resume=RUN_ID` continues an interrupted train run in place,
    with the config it was started with."""
    return _make("train", config, overrides, force, dataset=dataset, resume=resume)


def tune(config: ConfigLike = None, overrides: Overrides = None, *,
         dataset: str | None = None, force: bool = False):
    """A Ray Tune + Optuna sweep over `tune.space`; each trial a nested run."""
    return _make("tune", config, overrides, force, dataset=dataset)


def infer(config: ConfigLike = None, overrides: Overrides = None, *, train_run: str | None = None,
          dataset: str | None = None, force: bool = False):
    """Embed a dataset (`dataset`, default: the train run's) with a trained model: `train_run`,
    else `infer.model`, else the config's train run, made or reused."""
    return _make("infer", config, overrides, force, train_run=train_run, dataset=dataset)


def index(config: ConfigLike = None, overrides: Overrides = None, *,
          embeddings: str | None = None, analysis: str | None = None, force: bool = False):
    """Index an infer run's embeddings (`embeddings`, default: made or reused from the
    config). With `index.vectors = "auto"` (the default) they are joined with the anomaly
    signature of an analyse run of the same embeddings: `analysis`, or the newest that
    measured stamp statistics, if any."""
    return _make("index", config, overrides, force, embeddings=embeddings, analysis=analysis)


def reduce(config: ConfigLike = None, overrides: Overrides = None, *,
           embeddings: str | None = None, force: bool = False):
    return _make("reduce", config, overrides, force, embeddings=embeddings)


def analyse(config: ConfigLike = None, overrides: Overrides = None, *,
            embeddings: str | None = None, map: str | None = None, force: bool = False):
    """Outliers, clusters, crossmatch and latent quality of an infer run (`embeddings`,
    default: made or reused from the config). `map` is a reduce run of the same infer run
    whose 2D map is clustered (`analyse.cluster_on = "auto"`, the default, or "map") and
    scored; without one, "auto" clusters a UMAP map of the latent space made on the spot and
    "map" makes or reuses the config's reduce run. Says what it found (top outliers, clusters,
    quality, the gallery's path) on the terminal."""
    return _make("analyse", config, overrides, force, embeddings=embeddings, map=map)


def peel(config: ConfigLike = None, overrides: Overrides = None, *, analyse: str | None = None,
         rounds: int = 1, remove: str | None = None, force: bool = False):
    """Remove the top outliers of an analyse run (or, first, the ids in `remove`, e.g. a
    selection exported from the app), retrain with the same config and analyse again,
    `rounds` times; each round nested under one `peel` run."""
    from hyrax_mlops.stages import peel as stage
    from hyrax_mlops.stages.resolve import make

    cfg = load_config(config, overrides)
    if analyse is None:
        with upstream():
            analyse = make("analyse", cfg).run_id
    return stage.run(cfg, analyse, rounds=rounds, remove_file=remove, force=force)


def compare(runs: Iterable[str]):
    """Infer (or analyse) runs ranked by latent quality (`quality.knn_purity`, then
    `quality.silhouette`), with each model's val_loss beside: a DataFrame."""
    from hyrax_mlops.ranking import compare_runs

    return compare_runs(runs)


def pipeline(config: ConfigLike = None, overrides: Overrides = None, *, force: bool = False):
    """Every stage, as nested runs of one parent run; unchanged stages are reused."""
    return _make("pipeline", config, overrides, force)


def search_by_id(run: str, object_id: str, k: int = 10, config: ConfigLike = None):
    from hyrax_mlops.search import search_by_id as _search

    return _search(run, object_id, k, load_config(config))


def search_by_vector(run: str, vector, k: int = 10, config: ConfigLike = None):
    from hyrax_mlops.search import search_by_vector as _search

    return _search(run, vector, k, load_config(config))


def search_by_cutout(run: str, path: str, k: int = 10, config: ConfigLike = None):
    """Objects most like a FITS cutout, embedded with the model behind the index `run`."""
    from hyrax_mlops.search import search_by_cutout as _search

    return _search(run, path, k, load_config(config))


def search_by_spectrum(run: str, path: str, k: int = 10, config: ConfigLike = None):
    """Objects most like a spectrum (FITS WAVE/FLUX table or CSV), embedded with the run's
    own model: reverse search by spectrum."""
    from hyrax_mlops.search import search_by_spectrum as _search

    return _search(run, path, k, load_config(config))


def search_by_lightcurve(run: str, path: str, k: int = 10, config: ConfigLike = None):
    """Objects most like a light curve (CSV or Parquet: time, band, mag or flux), embedded
    with the run's own model."""
    from hyrax_mlops.search import search_by_lightcurve as _search

    return _search(run, path, k, load_config(config))


def explore(run: str | None = None, config: ConfigLike = None, **options):
    """The explorer (map, linked selection table, thumbnails, neighbours) and compare, in
    this notebook cell, for a reduce, infer or pipeline run (default: the newest reduce run).
    `.selection()` of what it returns is the map's current selection as a DataFrame. Behind
    JupyterHub (the Rubin Science Platform) it is reached through jupyter-server-proxy;
    `proxy="/prefix/"` names the Jupyter server's base path, `proxy=False` forbids it."""
    import importlib

    try:  # the app is the outermost layer: imported only when asked for
        notebook = importlib.import_module("dash_app.notebook")
    except ImportError as exc:
        from hyrax_mlops.errors import HyraxError

        raise HyraxError(f"the explorer needs the app's extras ({exc}). Fix: pip install "
                         "'hyrax-mlops[app]'") from None
    return notebook.explore(run, load_config(config), **options)


def results(run: str, config: ConfigLike = None):
    """Every table a run logged (a pipeline run: its stages' too) as a DataFrame, by name:
    `hm.results(run)["outliers"]`, `["umap_2d"]`, `["embeddings"]`, `["catalog"]`."""
    from hyrax_mlops.tables import results as _results
    from hyrax_mlops.tracking import ArtifactCache

    return _results(run, ArtifactCache.of(load_config(config)))


def lookup(run: str, object_ids, *, pixels: bool = True, config: ConfigLike = None):
    """The objects `object_ids` of the dataset behind `run`, in that order, as a DataFrame:
    catalog row, analysis columns, and (`pixels`) the stamp or the light curve / spectrum."""
    from hyrax_mlops.tables import lookup as _lookup
    from hyrax_mlops.tracking import ArtifactCache

    return _lookup(run, object_ids, pixels=pixels, cache=ArtifactCache.of(load_config(config)))


def export_onnx(train_run: str, config: ConfigLike = None, overrides: Overrides = None, *,
                force: bool = False):
    """Export a train (or tune) run's model to ONNX, beside its MLflow model: artifacts
    `onnx/model.onnx` (inputs "stamps" or the catalog features, outputs "embedding" and, for a
    classifier, "probabilities"; dynamic batch axis) and `onnx/model.json` of that run, kept
    only once onnxruntime agrees with PyTorch on real objects of its dataset. An export already
    there is kept unless `force`. `infer.engine = "onnx"` then runs it."""
    from hyrax_mlops.stages.export import export_onnx as _export_onnx

    return _export_onnx(load_config(config, overrides), train_run, force=force)


def lineage(run_id: str) -> str:
    """The chain of runs behind `run_id`, as printable text."""
    from hyrax_mlops.tracking import lineage_lines

    return "\n".join(lineage_lines(run_id))


def register(run_id: str, name: str, alias: str | None = None):
    """Register a train or tune run's model as `name` (and point `alias` at the version)."""
    from hyrax_mlops.model_registry import register as _register

    return _register(run_id, name, alias)
