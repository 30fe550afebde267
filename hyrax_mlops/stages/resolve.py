"""One resolver for every door: make (or reuse) a stage, first making or reusing each input
run it was not given, as the stage registry says, like `make`.

`hm.reduce()` alone gives maps of the current config's model; `pipeline` is the same resolver
asked for every stage under one parent run; `peel` asks it for a round's analyse with the
round's dataset pinned. Every check of every stage a call will make runs before the first run
exists.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from hyrax_mlops.config import Config
from hyrax_mlops.run_context import upstream
from hyrax_mlops.stages.registry import STAGES
from hyrax_mlops.tracking import DATASET_STAGES, StageRun


def check_dataset_columns(cfg: Config, stages: Collection[str]) -> None:
    """The catalog columns the config names, against the dataset about to be made (by the
    dataset stage among `stages`); and the label "quality" needs, when `stages` analyse it."""
    from hyrax_mlops.stages._columns import check_columns, expected_columns

    maker = next((s for s in stages if s in DATASET_STAGES), None)
    columns = expected_columns(cfg, maker)
    if "analyse" in stages:
        from hyrax_mlops.stages.analyse import quality_label

        quality_label(cfg, columns)
    check_columns(cfg, columns)


class Resolver:
    """Makes stages under one config. `parent_run_id` nests each run made (pipeline, peel);
    `pinned` gives an input to every stage that takes it (peel's round dataset);
    `force_upstream` re-runs the inputs made, not only the stage asked for."""

    def __init__(self, cfg: Config, *, parent_run_id: str | None = None,
                 pinned: Mapping[str, str] | None = None, force_upstream: bool = False) -> None:
        self.cfg = cfg
        self.parent_run_id = parent_run_id
        self.pinned = dict(pinned or {})
        self.force_upstream = force_upstream
        self.made: dict[str, StageRun] = {}  # by stage name, in the order made
        self._depth = 0

    def _inputs(self, stage: str, given: Mapping[str, str], made: Mapping[str, Any],
                make_one) -> dict[str, str]:
        """The stage's input runs: given, else pinned, else `make_one(maker, inputs)` for the
        stage its rule names (None: left unset). Inputs are resolved in declared order and a
        maker is handed those already known that it takes too: analyse's map is a reduce of
        the embeddings analyse was given, not of the config's own."""
        inputs: dict[str, str] = {}
        for wanted in STAGES.get(stage).inputs:
            run_id = given.get(wanted.name) or self.pinned.get(wanted.name)
            if not run_id:
                maker = wanted.make(self.cfg, made)
                if maker:
                    takes = {i.name for i in STAGES.get(maker).inputs}
                    run_id = make_one(maker, {k: v for k, v in inputs.items() if k in takes})
            if run_id:
                inputs[wanted.name] = run_id
        return inputs

    def plan(self, stage: str, given: Mapping[str, str] | None = None) -> list[str]:
        """The stages `make(stage, **given)` makes or reuses, inputs first."""
        order: list[str] = []

        def visit(name: str, inputs: Mapping[str, str]) -> None:
            def planned(maker: str, known: Mapping[str, str]) -> str:
                if maker not in order and maker not in self.made:
                    visit(maker, known)
                return f"<{maker} run>"  # stands for the run id it will have

            self._inputs(name, inputs, dict.fromkeys([*self.made, *order]), planned)
            if name not in order:
                order.append(name)

        visit(stage, given or {})
        return order

    def check(self, stages: Iterable[str]) -> None:
        """Every config check of `stages`, and the dataset's columns when one is to be made."""
        stages = list(stages)
        for name in stages:
            STAGES.get(name).check_config(self.cfg)
        if set(stages) & set(DATASET_STAGES):
            check_dataset_columns(self.cfg, stages)

    def make(self, stage: str, *, force: bool = False, options: Mapping[str, Any] | None = None,
             **given: str | None) -> StageRun:
        """Make or reuse `stage` from the input runs `given` (by input name), making or reusing
        the others it needs; `options` go to the stage's run as they are."""
        spec = STAGES.get(stage)
        known = {i.name for i in spec.inputs}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"stage '{stage}' takes no input {', '.join(unknown)}; its inputs: "
                            f"{', '.join(sorted(known)) or 'none'}")
        given = {k: v for k, v in given.items() if v}
        if given.get("resume"):
            return spec.code().resume(given["resume"])
        if self._depth == 0:
            self.check(self.plan(stage, given))
        inputs = self._inputs(stage, given, self.made, lambda maker, known: (
            self.made.get(maker) or self._upstream(maker, known)).run_id)
        kwargs = {"force": force, **(options or {})}
        if self.parent_run_id:
            kwargs["parent_run_id"] = self.parent_run_id
        result = spec.run(self.cfg, **inputs, **kwargs)
        self.made[stage] = result
        return result

    def _upstream(self, stage: str, given: Mapping[str, str]) -> StageRun:
        self._depth += 1
        try:
            with upstream():
                return self.make(stage, force=self.force_upstream, **given)
        finally:
            self._depth -= 1


def make(stage: str, cfg: Config, *, force: bool = False, **given: str | None) -> StageRun:
    """`stage` under `cfg` from the input runs `given`, the others made or reused."""
    return Resolver(cfg).make(stage, force=force, **given)
