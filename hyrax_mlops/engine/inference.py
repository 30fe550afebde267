"""Embed (and classify) every object of a dataset with a trained model, in batches, without
gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hyrax_mlops.data.prefetch import prefetch
from hyrax_mlops.engine.loop import resolve_device, to_device
from hyrax_mlops.progress import tqdm


def model_outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embedding, class probabilities or None) of one batch: `embed` and `predict` where the
    model has them; a predict-only model's probabilities are its embedding."""
    embed, predict = getattr(model, "embed", None), getattr(model, "predict", None)
    probs = predict(batch) if callable(predict) else None
    z = embed(batch) if callable(embed) else probs
    return z.reshape(z.shape[0], -1), probs  # shape[0], not len(): stays symbolic in export


def embed_cutouts(model: torch.nn.Module, normalizer, x: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings (and probabilities) of raw float32 cutouts (n, bands, h, w), normalised with
    the model's own transform: what serving and search-by-cutout both need."""
    x = normalizer.apply(np.array(x, dtype=np.float32), inplace=True)
    with torch.no_grad():
        z, probs = model_outputs(model.eval(), {"image": torch.from_numpy(x)})
    return z.float().numpy(), None if probs is None else probs.float().numpy()


class _Rows:
    """Per-batch outputs copied into one float32 array sized for the whole dataset (grown if
    the loader yields more): a list of small per-batch arrays fragmented the heap (0.8 GB of
    RSS for 256 MB of embeddings at 1M) and concatenating them copied all."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.n, self.out = max(capacity, 1), 0, None

    def add(self, part: np.ndarray) -> None:
        if self.out is None:
            self.out = np.empty((self.capacity, *part.shape[1:]), np.float32)
        if self.n + len(part) > len(self.out):
            grown = np.empty((max(2 * len(self.out), self.n + len(part)), *part.shape[1:]),
                             np.float32)
            grown[:self.n] = self.out[:self.n]
            self.out = grown
        self.out[self.n:self.n + len(part)] = part
        self.n += len(part)

    def array(self) -> np.ndarray | None:
        return None if self.out is None else self.out[:self.n]


def embed_all(model: torch.nn.Module, loader, device: str = "cpu", precision: str = "fp32",
              channels_last: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (n, dim) embeddings in the loader's order, and (n, classes) probabilities for a
    model that predicts (else None); computed in `precision` (bf16/fp16 autocast)."""
    from hyrax_mlops.engine.precision import Compute

    compute = Compute(resolve_device(device), precision, channels_last)
    compute.prepare(model).eval()
    rows = len(getattr(loader, "dataset", ()))  # a streamed dataset's failures yield fewer
    emb, probs_out = _Rows(rows), _Rows(rows)
    with compute.inference():
        for batch in tqdm(prefetch(loader), desc="infer", unit="batch", total=len(loader)):
            z, probs = model_outputs(model, compute.batch(batch))
            emb.add(z.float().cpu().numpy())
            if probs is not None:
                probs_out.add(probs.float().cpu().numpy())
    out = emb.array()
    return (np.zeros((0, 0), np.float32) if out is None else out), probs_out.array()


def can_reconstruct(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "reconstruct", None))


Statistics = Callable[[torch.Tensor, torch.Tensor | None], dict[str, np.ndarray]]


def batch_statistics(loader, statistics: Statistics, model: torch.nn.Module | None = None,
                     device: str = "cpu", desc: str = "statistics") -> dict[str, np.ndarray]:
    """`statistics(images, residuals)` of every batch, joined in the loader's order; with a
    reconstructing `model`, residuals = reconstruction - input (model-normalised pixels) and
    `reconstruction_error` (their mean square) is added; without one, residuals is None."""
    dev = resolve_device(device)
    if model is not None:
        model.to(dev).eval()
    parts: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for batch in tqdm(prefetch(loader), desc=desc, unit="batch", total=len(loader)):
            batch = to_device(batch, dev)
            residual = None if model is None else model.reconstruct(batch) - batch["image"]
            part = dict(statistics(batch["image"], residual))
            if residual is not None:
                part["reconstruction_error"] = (
                    residual.float().pow(2).flatten(1).mean(1).cpu().double().numpy())
            parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
