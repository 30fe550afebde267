"""`pipeline`: one parent run whose nested runs are the stages, each reused when unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

from hyrax_mlops.config import Config
from hyrax_mlops.stages import train
from hyrax_mlops.stages.resolve import Resolver
from hyrax_mlops.tracking import (
    DATASET_STAGES,
    TAG_REUSED,
    TAG_STAGE_RUN,
    StageRun,
    StageSpec,
    run_stage,
)

ALL_SECTIONS = tuple(Config.model_fields)


@dataclass
class PipelineResult:
    run_id: str
    stages: dict[str, StageRun] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> StageRun:
        return self.stages[stage]

    def summary(self) -> str:
        """One line per stage (ran/reused, run name and id), its summary beneath on one."""
        lines = []
        for step in self.stages.values():
            lines.append(step.headline())
            if step.summary:
                lines.append("          " + "; ".join(line.strip() for line in step.summary))
        return "\n".join(lines)


def stages(cfg: Config) -> list[str]:
    """The stages a pipeline asks for, in order; each one's inputs come from those before."""
    return ["train", "infer", "reduce", *(["analyse"] if cfg.pipeline.analyse else []),
            "index"]  # index after analyse: its stamp statistics join the vectors


def check(cfg: Config) -> None:
    """Every check of every stage this config will run, before the parent run exists: names,
    keys, paths, the user's catalog, and the catalog columns the config names."""
    resolver = Resolver(cfg)
    planned: list[str] = []
    for stage in stages(cfg):
        planned += [s for s in resolver.plan(stage) if s not in planned]
    resolver.check(planned)


def run(cfg: Config, *, force: bool = False, parent_run_id: str | None = None
        ) -> PipelineResult:
    """Every stage as a nested run of one pipeline run; checked first by the resolver (the
    pipeline stage's `check`)."""
    import mlflow

    result = PipelineResult(run_id="")

    def body(parent: str) -> None:
        result.run_id = parent
        resolver = Resolver(cfg, parent_run_id=parent, force_upstream=force)
        for stage in stages(cfg):
            resolver.make(stage, force=force)
        steps = result.stages
        steps["dataset"] = resolver.made[cfg.pipeline.dataset]
        steps.update((name, step) for name, step in resolver.made.items()
                     if name not in DATASET_STAGES)
        for name, step in steps.items():
            mlflow.set_tag(TAG_STAGE_RUN + name, step.run_id)
            mlflow.set_tag(TAG_REUSED + name, str(step.reused).lower())
        mlflow.log_metric("stages_reused", sum(s.reused for s in steps.values()))

    source = (cfg.download.source if cfg.pipeline.dataset == "download" else "ingest")
    name = train.run_name(cfg).replace("train-", f"pipeline-{source}-", 1)
    run_stage(StageSpec("pipeline", ALL_SECTIONS, name=name), cfg, body, force=True,
              parent_run_id=parent_run_id)
    return result
