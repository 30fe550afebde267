"""`pipeline`: one parent run whose nested runs are the stages, each reused when unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

from hyrax_mlops.config import Config
from hyrax_mlops.stages import analyse, download, index, infer, ingest, reduce, train
from hyrax_mlops.tracking import (
    TAG_REUSED,
    TAG_STAGE_RUN,
    StageRun,
    StageSpec,
    get_run,
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


def check(cfg: Config) -> None:
    """Every check of every stage this config will run, before the parent run exists: names,
    keys, paths, the user's catalog, and the catalog columns the config names."""
    from hyrax_mlops.stages._columns import check_columns, expected_columns

    if cfg.pipeline.dataset == "ingest":
        ingest.check(cfg)
    else:
        download.check(cfg)
    train.check_config(cfg)
    index.backend(cfg)
    reduce.check(cfg)
    columns = expected_columns(cfg)
    if cfg.pipeline.analyse:
        analyse.check(cfg)
        analyse.quality_label(cfg, columns)
    check_columns(cfg, columns)


def run(cfg: Config, *, force: bool = False) -> PipelineResult:
    import mlflow

    check(cfg)
    result = PipelineResult(run_id="")

    def body(parent: str) -> None:
        result.run_id = parent
        steps = result.stages
        data_stage = ingest if cfg.pipeline.dataset == "ingest" else download
        steps["dataset"] = data_stage.run(cfg, force=force, parent_run_id=parent)
        dataset_id = steps["dataset"].run_id
        steps["train"] = train.run(cfg, dataset_id, force=force, parent_run_id=parent)
        steps["infer"] = infer.run(cfg, train_run_id=steps["train"].run_id,
                                   dataset_run_id=dataset_id, force=force, parent_run_id=parent)
        steps["reduce"] = reduce.run(cfg, steps["infer"].run_id, force=force,
                                     parent_run_id=parent)
        if cfg.pipeline.analyse:  # on the map just made, when it has a 2D one
            map_run = steps["reduce"].run_id if 2 in cfg.reduce.dims else None
            steps["analyse"] = analyse.run(cfg, steps["infer"].run_id, reduce_run_id=map_run,
                                           force=force, parent_run_id=parent)
        # after analyse: its stamp statistics join the vectors (index.vectors = "auto")
        analysed = steps["analyse"].run_id if "analyse" in steps else None
        if analysed and not index.measured_statistics(get_run(analysed)):
            analysed = None
        steps["index"] = index.run(cfg, steps["infer"].run_id, analyse_run_id=analysed,
                                   force=force, parent_run_id=parent)
        for name, step in steps.items():
            mlflow.set_tag(TAG_STAGE_RUN + name, step.run_id)
            mlflow.set_tag(TAG_REUSED + name, str(step.reused).lower())
        mlflow.log_metric("stages_reused", sum(s.reused for s in steps.values()))

    source = (cfg.download.source if cfg.pipeline.dataset == "download" else "ingest")
    name = train.run_name(cfg).replace("train-", f"pipeline-{source}-", 1)
    run_stage(StageSpec("pipeline", ALL_SECTIONS, name=name), cfg, body, force=True)
    return result
