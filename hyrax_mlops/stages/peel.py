"""`peel`: take off what an outlier ranking (or a selection) found, retrain, look again.

Each round removes the top outliers of the previous analysis (`is_outlier`: the top
`analyse.top_fraction`), or, in the first round, the ids of a selection file (e.g. exported from
the app), as a `filter` dataset run; then trains with the same config, infers and analyses
again. The rounds are nested runs under one `peel` run, which logs per-round metrics and
`peel/rounds.csv`, so the artefact classes found in each round can be looked at in order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hyrax_mlops.config import Config
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.summaries import TAG_PEEL_ROUND
from hyrax_mlops.tracking import ArtifactCache, StageRun, StageSpec, get_run, input_run, run_stage

ROUNDS = "peel/rounds.csv"


def _selection(path: Path) -> list[str]:
    from hyrax_mlops.data.catalogs import read_catalog

    return read_catalog(path)["object_id"].astype(str).tolist()


def top_outliers(cfg: Config, analyse_run_id: str) -> list[str]:
    """The ids an analyse run flagged as outliers (its top `analyse.top_fraction`)."""
    import pandas as pd

    from hyrax_mlops.analysis.outliers import OUTLIERS_TABLE

    try:
        table = pd.read_parquet(ArtifactCache.of(cfg).fetch(analyse_run_id, OUTLIERS_TABLE))
    except Exception:
        raise ConfigError(f"analyse run '{analyse_run_id}' has no {OUTLIERS_TABLE}: peel needs "
                          "\"outliers\" in analyse.analyses") from None
    return table.loc[table["is_outlier"], "object_id"].astype(str).tolist()


def run(cfg: Config, analyse_run_id: str, *, rounds: int = 1, remove_file: str | None = None,
        force: bool = False) -> StageRun:
    """`rounds` rounds of remove → retrain → analyse, starting from `analyse_run_id`."""
    from hyrax_mlops.data.dataset import sha256_file

    if rounds < 1:
        raise ConfigError(f"peel got rounds = {rounds}. Fix: --rounds 1 or more")
    if "outliers" not in cfg.analyse.analyses and (rounds > 1 or not remove_file):
        raise ConfigError("config key 'analyse.analyses' must include \"outliers\" for peel to "
                          "find what to remove")
    start = get_run(analyse_run_id, "analyse")
    selection = None
    if remove_file:
        path = Path(remove_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"selection file '{remove_file}' does not exist. Fix: pass a "
                              "CSV/Parquet/FITS table with an object_id column (the app's "
                              "Export CSV is one)")
        selection = _selection(path)
    fingerprint = f"rounds={rounds}:" + (sha256_file(path)[:16] if remove_file else "outliers")
    spec = StageSpec("peel", ("analyse", "data", "model", "train"),
                     inputs={"analyse": analyse_run_id}, fingerprint=fingerprint,
                     name=f"peel-{rounds}r-{'selection' if remove_file else 'outliers'}")

    def body(parent: str) -> dict[str, str]:
        return _peel(cfg, start, rounds, selection, parent)

    return run_stage(spec, cfg, body, force=force)


def _peel(cfg: Config, start, rounds: int, selection: list[str] | None,
          parent: str) -> dict[str, str]:
    import mlflow
    import pandas as pd

    from hyrax_mlops.stages import filter
    from hyrax_mlops.stages.resolve import Resolver

    analyse_id = start.info.run_id
    dataset_id = input_run(start, "dataset")
    table = []
    for r in range(1, rounds + 1):
        if r == 1 and selection is not None:
            remove, why = selection, "selection file"
        else:
            remove, why = top_outliers(cfg, analyse_id), f"top outliers of analyse {analyse_id}"
        ds = filter.run(cfg, dataset_id, remove, reason=f"round {r}: {why}", parent_run_id=parent)
        # the round's train, infer (and map) and analyse, all on the filtered dataset
        resolver = Resolver(cfg, parent_run_id=parent, pinned={"dataset": ds.run_id})
        tr = resolver.make("train", options={"name_suffix": f"peel{r}"})
        an = resolver.make("analyse")
        inf = resolver.made["infer"]
        metrics = mlflow.get_run(an.run_id).data.metrics
        row = {"round": r, "removed": len(remove), "reason": why, "dataset": ds.run_id,
               "train": tr.run_id, "infer": inf.run_id, "analyse": an.run_id,
               "val_loss": mlflow.get_run(tr.run_id).data.metrics.get("best_val_loss"),
               **{k: v for k, v in metrics.items() if k.startswith("quality.")}}
        table.append(row)
        mlflow.set_tags({f"{TAG_PEEL_ROUND}{r}.{k}": str(row[k])
                         for k in ("dataset", "train", "infer", "analyse", "removed")})
        mlflow.log_metrics({k: float(v) for k, v in row.items()
                            if k.startswith("quality.") or k in ("removed", "val_loss")
                            if v is not None}, step=r)
        analyse_id, dataset_id = an.run_id, ds.run_id
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rounds.csv"
        pd.DataFrame(table).to_csv(out, index=False)
        mlflow.log_artifact(str(out), "peel")
    return {"analyse": analyse_id, "dataset": dataset_id}
