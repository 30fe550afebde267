"""DataProvider: a dataset run's artifacts as normalised, split torch DataLoaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from hyrax_mlops.config import Config
from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
from hyrax_mlops.data.normalize import Normalizer, fit_normalizer
from hyrax_mlops.data.splits import assign_splits
from hyrax_mlops.tracking import fetch_artifacts

_FIT_SAMPLE = 2000  # objects used to fit normalisation statistics


class _Images(TorchDataset):
    def __init__(self, data: Dataset, rows: np.ndarray, norm: Normalizer) -> None:
        self.data, self.rows, self.norm = data, rows, norm

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        x = self.norm.apply(self.data.images([row])[0])
        return {"image": torch.from_numpy(x), "row": torch.tensor(row)}


class DataProvider:
    """Reads a dataset through MLflow (cached locally by run id) and feeds torch.

    Splits are assigned by hashing object ids, so they never depend on order or size.
    Normalisation is fitted on the training split unless a fitted `normalizer` is given.
    """

    def __init__(self, dataset_run_id: str, cfg: Config,
                 normalizer: Normalizer | None = None, local_dir: str | None = None) -> None:
        self.run_id = dataset_run_id
        self.cfg = cfg
        if local_dir is None or not Path(local_dir).is_dir():  # e.g. a worker on another node
            local_dir = fetch_artifacts(dataset_run_id, ARTIFACT_DIR, cfg)
        self.data = Dataset(local_dir)
        self.splits = assign_splits(self.data.ids, cfg.data.split, cfg.data.split_seed)
        self.normalizer = normalizer or self._fit(cfg.data.normalize)

    @property
    def catalog(self):
        return self.data.catalog

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.shape

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split (train, val, test) or of every object (None)."""
        if split is None:
            return np.arange(len(self.data))
        return np.flatnonzero(self.splits == split)

    def _fit(self, method: str) -> Normalizer:
        rows = self.rows("train")
        if len(rows) == 0:
            rows = self.rows()
        rows = rows[:: max(1, len(rows) // _FIT_SAMPLE)]
        return fit_normalizer(method, self.data.images(rows))

    def torch_dataset(self, split: str | None = None) -> TorchDataset:
        return _Images(self.data, self.rows(split), self.normalizer)

    def dataloader(self, split: str | None = None, *, shuffle: bool = False,
                   batch_size: int | None = None, seed: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.torch_dataset(split), batch_size=batch_size or self.cfg.data.batch_size,
            shuffle=shuffle, generator=gen, num_workers=self.cfg.data.num_workers,
        )
