"""Lineage: the runs behind a run (its inputs, theirs, ...), the runs that consumed it, and
the nearest run of a stage upstream."""

from __future__ import annotations

from dataclasses import dataclass

from hyrax_mlops.errors import LineageError
from hyrax_mlops.tracking.runs import (
    TAG_CODE_VERSION,
    TAG_CONFIG_HASH,
    TAG_INPUT,
    TAG_STAGE,
    TAG_STAGE_RUN,
    get_run,
)
from hyrax_mlops.tracking.store import use_store


def find_in_lineage(run_id: str, stage: str) -> str:
    """Walk a run's inputs upstream to the nearest run of `stage`."""
    seen: set[str] = set()
    todo = [run_id]
    while todo:
        rid = todo.pop(0)
        if rid in seen:
            continue
        seen.add(rid)
        run = get_run(rid)
        if run.data.tags.get(TAG_STAGE) == stage:
            return rid
        todo += [v for k, v in sorted(run.data.tags.items()) if k.startswith(TAG_INPUT)]
        todo += [v for k, v in sorted(run.data.tags.items()) if k.startswith(TAG_STAGE_RUN)]
    raise LineageError(f"no '{stage}' run upstream of run '{run_id}'.")


@dataclass
class LineageNode:
    """One run in a lineage walk: `label` is the input name it was consumed as."""

    run_id: str
    label: str
    depth: int
    stage: str = "?"
    status: str = ""
    config_hash: str = "-"
    code_version: str = "-"
    repeat: bool = False  # already listed higher up
    missing: bool = False  # not in this tracking store


def lineage(run_id: str) -> list[LineageNode]:
    """The runs behind `run_id` (its inputs, their inputs, ...), depth first."""
    import mlflow

    use_store()
    nodes: list[LineageNode] = []
    shown: set[str] = set()

    def visit(rid: str, label: str, depth: int) -> None:
        node = LineageNode(rid, label, depth)
        nodes.append(node)
        try:
            run = mlflow.get_run(rid)
        except Exception:
            node.missing = True
            return
        t = run.data.tags
        node.stage, node.status = t.get(TAG_STAGE, "?"), run.info.status
        node.config_hash = t.get(TAG_CONFIG_HASH, "-")
        node.code_version = t.get(TAG_CODE_VERSION, "-")
        if rid in shown:
            node.repeat = True
            return
        shown.add(rid)
        children = sorted((k[len(TAG_INPUT):], v) for k, v in t.items() if k.startswith(TAG_INPUT))
        children += sorted(
            (k[len(TAG_STAGE_RUN):], v) for k, v in t.items() if k.startswith(TAG_STAGE_RUN)
        )
        for name, child in children:
            visit(child, name, depth + 1)

    visit(run_id, "", 0)
    return nodes


def consumers(run_id: str, experiment_ids: list[str]) -> list[tuple[str, str, str]]:
    """Runs that took `run_id` as an input: (input name, stage, run id), newest first."""
    from mlflow.tracking import MlflowClient

    out = []
    for name in ("dataset", "model", "embeddings"):
        for run in MlflowClient().search_runs(
            experiment_ids, f"tags.`{TAG_INPUT}{name}` = '{run_id}'",
            order_by=["attributes.start_time DESC"], max_results=50,
        ):
            out.append((name, run.data.tags.get(TAG_STAGE, "?"), run.info.run_id))
    return out


def lineage_lines(run_id: str) -> list[str]:
    """The chain of runs behind `run_id`, one line each, indented by depth."""
    lines = []
    for n in lineage(run_id):
        pad = "  " * n.depth + ("└─ " if n.depth else "")
        label = f"{n.label}: " if n.label else ""
        if n.missing:
            lines.append(f"{pad}{label}{n.run_id}  (missing from this tracking store)")
        elif n.repeat:
            lines.append(f"{pad}{label}{n.stage:<8} {n.run_id}  (shown above)")
        else:
            lines.append(f"{pad}{label}{n.stage:<8} {n.run_id}  {n.status:<8} "
                         f"config {n.config_hash}  code {n.code_version}")
    return lines
