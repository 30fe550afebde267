"""The stages as data: what each is called, which config sections it reads, which runs it
takes (which stage makes each, and whether to make it when not given), its config check and
the registered kinds its help lists.

The doors read this one table. The CLI builds a subcommand per stage with a flag per input;
MLproject's entry points (`render_mlproject`, checked against the file by the tests) pass
each input through `entrypoints/stage.py`; the Python door's function for a stage takes each
input as a keyword; `stages.resolve` makes or reuses the inputs a call is not given, for
every door, `pipeline` and `peel`. Adding a stage: its module (`SECTIONS`, a config `check`
and `run(cfg, <inputs>, *, force, parent_run_id)`) and one `_stage(...)` call here; `api`
gives it a door (`hm.<stage>`) and the CLI a subcommand.

    python -m hyrax_mlops.stages.registry > MLproject   # after adding a stage or an input
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hyrax_mlops.registry import Registry

if TYPE_CHECKING:
    from hyrax_mlops.config import Config

# Which stage makes an input the call was not given: a stage name, or None to leave it unset
# (the stage then decides, e.g. infer embeds its train run's dataset). `made` holds the runs
# made so far in this resolution by stage name (None while only planned).
MakeRule = Callable[["Config", Mapping[str, Any]], "str | None"]


def _never(cfg: Config, made: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Input:
    """A run a stage takes: `name` is its keyword in the Python door, `--name` (dashes) its
    CLI flag and MLproject parameter; `made_by` the stages whose runs it accepts."""

    name: str
    made_by: tuple[str, ...]
    help: str
    make: MakeRule = _never

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # the stage's module: its SECTIONS, check and run
    inputs: tuple[Input, ...] = ()
    kinds: tuple[str, ...] = ()  # registered kinds its --help lists (registry.KINDS)
    check: str | None = "check"  # the module's function checking the config alone

    def code(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections (or single keys, "data.mode") the stage's identity hashes and
        its body may read (its module's SECTIONS)."""
        module = self.code()  # () for a stage that reads no config: its inputs identify it
        return tuple(module.SECTIONS if hasattr(module, "SECTIONS") else module.ALL_SECTIONS)

    def run(self, cfg: Config, **inputs_and_options: Any):
        """The stage's body under its view of `cfg`: only the sections it declares (and
        where runs go); reading another raises UndeclaredConfigError."""
        return self.code().run(cfg.only(self.sections, self.name), **inputs_and_options)

    def check_config(self, cfg: Config) -> None:
        """Everything the stage can check before any run exists (names, keys, paths)."""
        if self.check:
            getattr(self.code(), self.check)(cfg)


STAGES: Registry[Stage] = Registry("stage")


def _stage(name: str, *inputs: Input, kinds: tuple[str, ...] = (),
           check: str | None = "check") -> None:
    STAGES.register(name)(Stage(name, f"hyrax_mlops.stages.{name}", inputs, kinds, check))


def _dataset_stage(cfg: Config, made: Mapping[str, Any]) -> str:
    return cfg.pipeline.dataset  # "download" or "ingest"


def _train_stage(cfg: Config, made: Mapping[str, Any]) -> str | None:
    return None if cfg.infer.model else "train"


def _infer_stage(cfg: Config, made: Mapping[str, Any]) -> str:
    return "infer"


def _map_stage(cfg: Config, made: Mapping[str, Any]) -> str | None:
    """The 2D map analyse clusters: the reduce run made alongside (pipeline) when it has one,
    else made from the config only when `analyse.cluster_on = "map"` asks for it."""
    a = cfg.analyse
    if "reduce" in made and 2 in cfg.reduce.dims:
        return "reduce"
    return "reduce" if a.cluster_on == "map" and "clusters" in a.analyses else None


def _statistics_stage(cfg: Config, made: Mapping[str, Any]) -> str | None:
    """The analyse run made alongside (pipeline), if it measured stamp statistics; otherwise
    none, and index takes the newest analyse run of its embeddings that did."""
    from hyrax_mlops.stages.index import measured_statistics
    from hyrax_mlops.tracking import get_run

    analysed = made.get("analyse")
    return "analyse" if analysed and measured_statistics(get_run(analysed.run_id)) else None


_DATASET = Input("dataset", ("download", "ingest", "filter"),
                 "dataset run id (default: make or reuse it from the config)", _dataset_stage)
_EMBEDDINGS = Input("embeddings", ("infer",),
                    "infer run id (default: make or reuse it from the config)", _infer_stage)

_stage("download", Input("resume", ("download",),
                         "continue this interrupted download run, fetching what is missing"),
       kinds=("sources",))
_stage("ingest")
_stage("train", _DATASET, Input("resume", ("train",), "continue this interrupted train run "
                                                      "from its last checkpoint"),
       kinds=("models", "backbones", "augmentations"), check="check_config")
_stage("tune", _DATASET, kinds=("models", "backbones", "augmentations"))
_stage("infer", Input("train_run", ("train", "tune"),
                      "train run id (default: infer.model, else from the config)", _train_stage),
       Input("dataset", ("download", "ingest", "filter"),
             "dataset run id to embed (default: the train run's dataset)"), check=None)
_stage("index", _EMBEDDINGS,
       Input("analysis", ("analyse",), "analyse run of the same infer run whose stamp "
                                       "statistics join the vectors (index.vectors=auto; "
                                       "default: its newest that measured them, if any)",
             _statistics_stage),
       kinds=("backends",), check="backend")
_stage("reduce", _EMBEDDINGS, kinds=("reducers",))
_stage("analyse", _EMBEDDINGS,
       Input("map", ("reduce",), "reduce run id of the same infer run: its 2D map is clustered "
                                 "(analyse.cluster_on=map) and scored (default: none, or made "
                                 "from the config when clustering on the map)", _map_stage),
       kinds=("analyses", "reducers"))
_stage("pipeline", kinds=("sources", "models", "backends", "reducers", "analyses"))
_stage("export", _EMBEDDINGS,
       Input("analysis", ("analyse",), "analyse run of the same infer run whose per-object "
                                       "columns join the table (default: none)"))

# the order of the MLproject file and of `hyrax-mlops --help`
ORDER = ("download", "ingest", "train", "tune", "infer", "index", "reduce", "analyse",
         "pipeline")

_HEADER = """\
name: hyrax-mlops

# Written by `python -m hyrax_mlops.stages.registry > MLproject` from the stage registry
# (hyrax_mlops/stages/registry.py); the tests fail when the two disagree.
# Run with: mlflow run . -e pipeline --env-manager local
# Parameters: config (a TOML file, "" = shipped defaults), overrides ("train.epochs=5
# reduce.dims=[2]"), force ("true" re-runs stages that have a matching finished run), and each
# input run the stage takes ("" = made or reused from the config).

entry_points:
"""
_APP = """\
  app:
    parameters:
      port: {type: string, default: "8050"}
    command: "hyrax-mlops app --port {port}"
"""


def ordered() -> list[Stage]:
    """Every registered stage: the built-in ones in ORDER, then plugins' by name."""
    names = [n for n in ORDER if n in STAGES] + [n for n in STAGES.names() if n not in ORDER]
    return [STAGES.get(n) for n in names]


def render_mlproject() -> str:
    """The MLproject file: one entry point per stage, with a parameter per input."""
    out = [_HEADER]
    for stage in ordered():
        params = ["config", "overrides", "force", *(i.name for i in stage.inputs)]
        out.append(f"  {stage.name}:\n    parameters:\n")
        for p in params:
            default = '"false"' if p == "force" else '""'
            out.append(f"      {p}: {{type: string, default: {default}}}\n")
        args = " ".join(f"--{p} {{{p}}}" for p in params)
        out.append(f'    command: "python entrypoints/stage.py {stage.name} {args}"\n')
    out.append(_APP)
    return "".join(out)


if __name__ == "__main__":
    print(render_mlproject(), end="")
