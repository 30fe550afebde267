"""A run's results as DataFrames, and objects looked up by id, for notebooks: what a stage made,
without knowing where its artifacts sit.

    hm.results(run)["outliers"]      # any table a run logged, by its name
    hm.lookup(run, ["XDF00007"])     # catalog rows + analysis columns + pixels or series
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hyrax_mlops.errors import DataError, LineageError
from hyrax_mlops.tracking import (
    DATASET_STAGES,
    TAG_INPUT,
    TAG_STAGE,
    TAG_STAGE_RUN,
    ArtifactCache,
    get_run,
    use_store,
)

TABLE_SUFFIXES = (".parquet", ".csv")
HISTORY = "history"  # a training run's metrics per epoch, read from MLflow, not a file
HISTORY_STAGES = ("train", "tune")
_SKIPPED = ("shards",)  # folders of pixels, not tables


def _table_artifacts(run_id: str, folder: str | None = None) -> list[str]:
    """The paths of every table (Parquet, CSV) a run logged, folders included."""
    from mlflow.tracking import MlflowClient

    out = []
    for item in MlflowClient().list_artifacts(run_id, folder):
        if item.is_dir:
            if Path(item.path).name not in _SKIPPED:
                out += _table_artifacts(run_id, item.path)
        elif item.path.endswith(TABLE_SUFFIXES):
            out.append(item.path)
    return out


class Results(Mapping[str, pd.DataFrame]):
    """The tables of a run and of the runs it was made from (a pipeline run: its stages'),
    by name: a file's name without its suffix (`outliers`, `umap_2d`, `embeddings`,
    `catalog`); the run's own first, then its inputs' upstream, `<stage>.<name>` where a
    name is taken. Read on first use."""

    def __init__(self, run_id: str, cache: ArtifactCache | None = None) -> None:
        use_store()
        self.run = get_run(run_id)
        self.stage = self.run.data.tags.get(TAG_STAGE, "?")
        self.cache = cache or ArtifactCache.at()
        self._where: dict[str, tuple[str, str]] = {}
        for run in _with_upstream(self.run):
            stage = run.data.tags.get(TAG_STAGE, "?")
            paths = _table_artifacts(run.info.run_id)
            if stage in HISTORY_STAGES:  # its per-epoch metrics, as a table
                paths.append(HISTORY)
            for path in paths:
                name = Path(path).name.rsplit(".", 1)[0]
                if name in self._where:
                    name = f"{stage}.{name}"
                self._where[name] = (run.info.run_id, path)
        self._read: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._where:
            raise KeyError(f"run {self.run.info.run_id} ({self.stage}) has no table '{name}'; "
                           f"its tables: {', '.join(self._where) or 'none'}")
        if name not in self._read and self._where[name][1] == HISTORY:
            self._read[name] = history(self._where[name][0])
        if name not in self._read:
            run_id, path = self._where[name]
            local = self.cache.fetch(run_id, path)
            table = pd.read_parquet(local) if path.endswith(".parquet") else pd.read_csv(
                local, dtype={"object_id": str})
            if "object_id" in table:  # ids are text, whatever the file's type
                table["object_id"] = table["object_id"].astype(str)
            self._read[name] = table
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return (f"<Results of {self.stage} run {self.run.info.run_id}: "
                f"{', '.join(self._where) or 'no tables'}>")


def history(run_id: str) -> pd.DataFrame:
    """A run's metrics logged at more than one step (per epoch: train_loss, val_loss, ...),
    one row per step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    series = {}
    for key in sorted(client.get_run(run_id).data.metrics):
        points = client.get_metric_history(run_id, key)
        if len(points) > 1:
            series[key] = {p.step: p.value for p in points}
    table = pd.DataFrame(series).sort_index()
    table.index.name = "step"
    return table.reset_index()


def _with_upstream(run) -> list:
    """The run, its stages (a pipeline), then the runs it was made from, nearest first."""
    order, seen, todo = [], set(), [run]
    while todo:
        current = todo.pop(0)
        if current.info.run_id in seen:
            continue
        seen.add(current.info.run_id)
        order.append(current)
        tags = sorted(current.data.tags.items())
        todo += [get_run(rid) for key, rid in tags if key.startswith(TAG_STAGE_RUN)]
        todo += [get_run(rid) for key, rid in tags if key.startswith(TAG_INPUT)]
    return order


def results(run_id: str, cache: ArtifactCache | None = None) -> Results:
    """Every table of a run as a DataFrame, by name (see `Results`)."""
    return Results(run_id, cache)


def _runs_behind(run_id: str) -> tuple[str, str | None]:
    """(the dataset run, the infer run or None) a run was made from: itself, its inputs,
    or, for a pipeline run, its stages."""
    run = get_run(run_id)
    tags = run.data.tags
    if tags.get(TAG_STAGE) == "pipeline":
        embeddings = tags.get(TAG_STAGE_RUN + "infer")
        dataset = tags.get(TAG_STAGE_RUN + "dataset")
        if not dataset:
            raise LineageError(f"pipeline run '{run_id}' has no dataset stage.")
        return dataset, embeddings
    stage = tags.get(TAG_STAGE)
    if stage in DATASET_STAGES:
        return run_id, None
    embeddings = run_id if stage == "infer" else tags.get(TAG_INPUT + "embeddings")
    dataset = tags.get(TAG_INPUT + "dataset")
    if not dataset and embeddings:
        dataset = get_run(embeddings).data.tags.get(TAG_INPUT + "dataset")
    if not dataset:
        raise LineageError(f"run '{run_id}' ({stage or '?'}) has no dataset in its lineage: "
                           "pass a dataset, train, infer, reduce, analyse, index or pipeline "
                           "run.")
    return dataset, embeddings


def lookup(run_id: str, object_ids: Sequence[str] | str, *, pixels: bool = True,
           cache: ArtifactCache | None = None) -> pd.DataFrame:
    """The objects `object_ids` (in that order) of the dataset behind `run_id`: catalog row,
    the analysis columns of its embeddings (outlier score, cluster, match), and with `pixels`
    the stamp (`image`, bands x height x width) where the dataset stores pixels, and the
    `lightcurve` / `spectrum` (a DataFrame each) where it has series."""
    from hyrax_mlops.data import series as S
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.search import with_analysis_columns

    use_store()
    cache = cache or ArtifactCache.at()
    one = isinstance(object_ids, (str, int, np.integer))  # one id, or a list of them
    wanted = [str(object_ids)] if one else [str(i) for i in object_ids]
    dataset_run, embeddings = _runs_behind(run_id)
    data = Dataset(cache.fetch(dataset_run, ARTIFACT_DIR))
    catalog = data.catalog.assign(object_id=data.catalog["object_id"].astype(str))
    row_of = pd.Series(np.arange(len(catalog)), index=catalog["object_id"])
    missing = [i for i in wanted if i not in row_of.index]
    if missing:
        padded = {i.lstrip("0") or "0": i for i in row_of.index if i.isdigit()}
        near = [f"'{padded[m.lstrip('0') or '0']}'" for m in missing[:5]
                if m.isdigit() and (m.lstrip("0") or "0") in padded]
        hint = f"; the dataset has {', '.join(near)}" if near else ""
        raise DataError(f"{len(missing)} of {len(wanted)} id(s) are not objects of dataset run "
                        f"{dataset_run}: {', '.join(missing[:5])}"
                        f"{' …' if len(missing) > 5 else ''} (ids are matched as text{hint})")
    rows = row_of.loc[wanted].to_numpy()
    out = catalog.iloc[rows].reset_index(drop=True)
    if embeddings:
        out = with_analysis_columns(out, embeddings, cache)
    if not pixels:
        return out
    if data.shape and not data.streamed:
        stamps = data.images(rows)
        out["image"] = list(stamps)
    for name, column in ((S.LIGHTCURVES, "lightcurve"), (S.SPECTRA, "spectrum")):
        path = data.root / name
        if path.is_file():
            table = pd.read_parquet(path)
            table["object_id"] = table["object_id"].astype(str)
            by_id = dict(iter(table.groupby("object_id", sort=False)))
            out[column] = [by_id[i].drop(columns="object_id").reset_index(drop=True)
                           if i in by_id else None for i in wanted]
    return out
