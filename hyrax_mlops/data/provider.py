"""DataProvider: a dataset run's artifacts as normalised, split torch DataLoaders."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from torch.utils.data import Dataset as TorchDataset

from hyrax_mlops.config import DataConfig
from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
from hyrax_mlops.data.normalize import Normalizer, fit_normalizer
from hyrax_mlops.data.splits import assign_splits
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.tracking import ArtifactCache

_FIT_SAMPLE = 2000  # objects used to fit normalisation statistics
_STREAM_FIT_SAMPLE = 256  # fewer when each one is a download


class _Images(TorchDataset):
    """Stamps of some rows, normalised. Read a batch at a time (`__getitems__`): one gather
    per shard and one vectorised normalisation, or a slice of the in-memory copy."""

    def __init__(self, data: Dataset, rows: np.ndarray, norm: Normalizer,
                 memory: torch.Tensor | None = None, labels: np.ndarray | None = None,
                 tabular: tuple[np.ndarray, np.ndarray] | None = None,
                 series: dict[str, np.ndarray] | None = None, *,
                 drop_failed: bool = False, on_failed=None) -> None:
        self.data, self.rows, self.norm, self.memory = data, rows, norm, memory
        self.drop_failed, self.on_failed = drop_failed, on_failed
        self.labels = None if labels is None else torch.from_numpy(labels)
        self.tabular = None if tabular is None else tuple(map(torch.from_numpy, tabular))
        self.series = {k: torch.from_numpy(v) for k, v in (series or {}).items()}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(self.rows[np.asarray(indices, dtype=np.int64)])
        x = None
        if self.memory is None and self.data.shape and self.data.streamed:
            x, ok = self.data.stream.fetch(rows.numpy())
            if self.on_failed is not None:
                self.on_failed()
            if self.drop_failed and not ok.all():  # a failed cutout is left out, never zeros
                rows, x = rows[torch.from_numpy(ok)], x[ok]
        batch = {"row": rows}
        if self.memory is not None:
            batch["image"] = self.memory[rows]
        elif self.data.shape:  # a catalog-only dataset has no pixels
            view = self.data.run_view(rows.numpy()) if x is None else None
            if view is not None:  # normalised straight from the shard: no copy first
                z = self.norm.apply(view)
                batch["image"] = torch.from_numpy(z if z.flags.writeable else np.array(z))
            else:
                if x is None:
                    x = self.data.images(rows.numpy())
                batch["image"] = torch.from_numpy(self.norm.apply(x, inplace=True))
        if self.tabular is not None:
            batch["tabular"], batch["tabular_mask"] = (t[rows] for t in self.tabular)
        for key, values in self.series.items():  # lightcurve(_mask), spectrum(_mask)
            batch[key] = values[rows]
        if self.labels is not None:
            batch["label"] = self.labels[rows]  # -1 for an unlabelled object
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}


def _collate(batch):
    """Batches arrive whole from `__getitems__`; anything else is collated as usual."""
    return batch if isinstance(batch, dict) else default_collate(batch)


class _Prefetched:
    """A DataLoader whose batches are prepared `depth` ahead in a background thread: a
    streamed batch's cutouts download while the model trains on the one before."""

    def __init__(self, loader: DataLoader, depth: int) -> None:
        self.loader, self.depth = loader, depth

    def __iter__(self):
        from hyrax_mlops.data.prefetch import prefetch

        # a batch whose every cutout failed is empty: skipped, not trained on
        return (b for b in prefetch(iter(self.loader), self.depth) if len(b["row"]))

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class DataProvider:
    """Reads a dataset through MLflow (cached locally by run id) and feeds torch.

    Splits are assigned by hashing object ids, so they never depend on order or size.
    Normalisation is fitted on the training split unless a fitted `normalizer` is given.
    """

    def __init__(self, dataset_run_id: str, data: DataConfig,
                 normalizer: Normalizer | None = None, local_dir: str | None = None,
                 cache: ArtifactCache | None = None) -> None:
        self.run_id = dataset_run_id
        self.settings = data  # the [data] section: how to read, split and batch
        if local_dir is None or not Path(local_dir).is_dir():  # e.g. a worker on another node
            local_dir = (cache or ArtifactCache.at()).fetch(dataset_run_id, ARTIFACT_DIR)
        self.data = Dataset(local_dir)
        if self.data.streamed:
            from hyrax_mlops.sources.stream import CutoutStream

            self.data.stream = CutoutStream(self.data.manifest, self.data.catalog, data)
            self._stream_run()  # now, in the stage's thread: batches are made in another
        self.classes, self.labels = self._labels(data)
        self.normalizer = normalizer or self._fit(data.normalize)
        if normalizer is None and data.features:
            from hyrax_mlops.data.normalize import fit_features

            train = self.rows("train")
            self.normalizer.features = fit_features(
                self.catalog.iloc[train if len(train) else self.rows()], data.features)
        scaler = self.normalizer.features
        self.tabular = scaler.transform(self.catalog) if scaler is not None else None
        self.series = self._series(data, normalizer is None)
        self._memory: torch.Tensor | None = None

    def _stream_run(self) -> str | None:
        """The run a streamed dataset's failures are counted on (the one active when the
        provider was made: train, or infer), looked up once."""
        if not hasattr(self, "_failures_run"):
            import mlflow

            active = mlflow.active_run()
            self._failures_run = active.info.run_id if active else None
            self._failures_said = 0
        return self._failures_run

    def report_stream_failures(self) -> int:
        """Count the objects a streamed dataset could not fetch so far: logged as the metric
        `stream_failed_objects` (and said) each time it grows. Returns the count."""
        stream = getattr(self.data, "stream", None)
        if stream is None:
            return 0
        run_id = self._stream_run()
        failed = stream.failed_objects
        if len(failed) <= self._failures_said:
            return len(failed)
        self._failures_said = len(failed)
        if run_id:
            import contextlib

            from mlflow.tracking import MlflowClient

            with contextlib.suppress(Exception):  # counting must never stop training
                MlflowClient().log_metric(run_id, "stream_failed_objects", len(failed),
                                          step=len(failed))
        from hyrax_mlops.tracking import say

        shown = ", ".join(f"{o} ({why})" for o, why in list(failed.items())[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        say(f"stream: {len(failed)} object(s) could not be fetched and are left out of the "
            f"batches, not trained on as zeros: {shown}{more} (metric stream_failed_objects)")
        return len(failed)

    def _series(self, data: DataConfig, fit: bool) -> dict[str, np.ndarray]:
        """Light-curve and spectrum tensors with masks for every row, when the dataset has
        them; their layout (bands, points, grid) is fitted here or taken from the model's."""
        import pandas as pd

        from hyrax_mlops.data import series as S

        lc_path, sp_path = self.data.root / S.LIGHTCURVES, self.data.root / S.SPECTRA
        if not (lc_path.is_file() or sp_path.is_file()):
            return {}
        layout = self.normalizer.series
        if fit or layout is None:
            layout = {"spectrum_grid": list(data.spectrum_grid),
                      "lightcurve_points": data.lightcurve_points, "lightcurve_bands": []}
            if lc_path.is_file():
                bands = pd.read_parquet(lc_path, columns=["band"])["band"]
                layout["lightcurve_bands"] = sorted(bands.astype(str).unique())
            self.normalizer.series = layout
        ids, out = self.data.ids, {}
        if lc_path.is_file():
            out["lightcurve"], out["lightcurve_mask"] = S.lightcurve_tensors(
                pd.read_parquet(lc_path), ids, layout["lightcurve_bands"],
                int(layout["lightcurve_points"]))
        if sp_path.is_file():
            lo, hi, n = layout["spectrum_grid"]
            grid = np.geomspace(float(lo), float(hi), int(n))
            out["spectrum"], out["spectrum_mask"] = S.spectrum_tensors(
                pd.read_parquet(sp_path), ids, grid)
        return out

    def _labels(self, data: DataConfig) -> tuple[list[str], np.ndarray | None]:
        """Classes (sorted) and each row's class index (-1 when unlabelled), from
        `data.label_column` of the catalog or of `data.labels_file` joined by object_id."""
        column = data.label_column
        if not column:
            return [], None
        source = "the dataset's catalog"
        table = self.data.catalog
        if data.labels_file:
            from hyrax_mlops.config import require_path
            from hyrax_mlops.data.catalogs import read_catalog

            path = require_path(data, "data.labels_file", "file")
            table, source = read_catalog(path), str(path)
        if column not in table.columns:
            raise ConfigError(f"config key 'data.label_column' = '{column}' is not a column of "
                              f"{source} (columns: {', '.join(map(str, table.columns))})")
        by_id = table.set_index("object_id")[column]
        values = by_id.reindex(self.data.ids)
        known = values.notna().to_numpy()
        text = values.astype(str).to_numpy()
        classes = sorted(set(text[known]))
        if len(classes) < 2:
            raise ConfigError(f"data.label_column '{column}' has {len(classes)} class(es) among "
                              f"this dataset's objects: a classifier needs two or more")
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[t] if k else -1 for t, k in zip(text, known, strict=True)],
                          dtype=np.int64)
        return classes, labels

    def data_info(self) -> dict:
        """What models may take from the data: classes and their counts in the train split."""
        info: dict = {}
        if self.tabular is not None:
            info["features"] = list(self.normalizer.features.names)
        if "lightcurve" in self.series:
            info["lightcurve_dim"] = int(self.series["lightcurve"].shape[2])
        if "spectrum" in self.series:
            info["spectrum_len"] = int(self.series["spectrum"].shape[2])
        if self.labels is not None:
            counts = np.bincount(self.labels[self.rows("train")], minlength=len(self.classes))
            info.update(classes=self.classes, class_counts=[int(c) for c in counts])
        return info

    @property
    def n_unlabelled(self) -> int:
        return 0 if self.labels is None else int((self.labels < 0).sum())

    @property
    def catalog(self):
        return self.data.catalog

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.shape

    @functools.cached_property
    def splits(self) -> np.ndarray:
        """Each row's split by its hashed id, worked out when a split is first asked for:
        inference reads every row and needs none."""
        return assign_splits(self.data.ids, self.settings.split, self.settings.split_seed)

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split (train, val, test) or of every object (None)."""
        if split is None:
            return np.arange(len(self.data))
        chosen = self.splits == split
        if self.labels is not None:  # training and evaluation use labelled objects only
            chosen &= self.labels >= 0
        return np.flatnonzero(chosen)

    def _fit(self, method: str) -> Normalizer:
        if not self.data.shape:
            return Normalizer("none", [], [])
        rows = self.rows("train")
        if len(rows) == 0:
            rows = self.rows()
        if self.data.streamed:
            rows = rows[:: max(1, len(rows) // _STREAM_FIT_SAMPLE)][:_STREAM_FIT_SAMPLE]
            images, ok = self.data.stream.fetch(rows)
            self.report_stream_failures()
            return fit_normalizer(method, images[ok] if ok.any() else images)
        rows = rows[:: max(1, len(rows) // _FIT_SAMPLE)]
        return fit_normalizer(method, self.data.images(rows))

    def _in_memory(self) -> torch.Tensor | None:
        """Every stamp normalised, held in memory when it fits under `data.cache_gb`: each
        epoch after the first read costs a slice, as with tensors already in RAM."""
        if self._memory is None and self.data.shape and not self.data.streamed:
            size_gb = len(self.data) * int(np.prod(self.input_shape)) * 4 / 2**30
            if not 0 < size_gb <= self.settings.cache_gb:
                return None
            memory = np.empty((len(self.data), *self.input_shape), np.float32)
            for i in range(0, len(self.data), 4096):
                rows = np.arange(i, min(i + 4096, len(self.data)))
                memory[rows] = self.normalizer.apply(self.data.images(rows), inplace=True)
            self._memory = torch.from_numpy(memory)
        return self._memory

    def torch_dataset(self, split: str | None = None, *, cache: bool = True,
                      drop_failed: bool | None = None) -> TorchDataset:
        """`cache=False` for a single pass (inference): reading once costs less than copying.
        A streamed object whose cutout failed is left out of the batches of a split
        (`drop_failed`, default: for a split, not for every row, where inference needs one
        output per row) and counted (`report_stream_failures`)."""
        if drop_failed is None:
            drop_failed = split is not None
        return _Images(self.data, self.rows(split), self.normalizer,
                       self._in_memory() if cache else self._memory, self.labels,
                       self.tabular, self.series, drop_failed=drop_failed,
                       on_failed=self.report_stream_failures if self.data.streamed else None)

    def dataloader(self, split: str | None = None, *, shuffle: bool = False,
                   batch_size: int | None = None, seed: int = 0,
                   cache: bool = True, prefetch: bool = True,
                   drop_failed: bool | None = None,
                   pin_memory: bool = False) -> DataLoader | _Prefetched:
        """Batches of one split. A streamed dataset's batches are prepared ahead in a thread
        unless `prefetch=False` (Ray Train wraps the DataLoader itself); `pin_memory` for a
        GPU, so host-to-device copies overlap compute."""
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            self.torch_dataset(split, cache=cache, drop_failed=drop_failed),
            batch_size=batch_size or self.settings.batch_size,
            shuffle=shuffle, generator=gen, num_workers=self.settings.num_workers,
            collate_fn=_collate, pin_memory=pin_memory,
        )
        if prefetch and self.data.streamed and self.settings.stream_prefetch:
            return _Prefetched(loader, self.settings.stream_prefetch)
        return loader
