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


def embed_all(model: torch.nn.Module, loader, device: str = "cpu", precision: str = "fp32",
              channels_last: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (n, dim) embeddings in the loader's order, and (n, classes) probabilities for a
    model that predicts (else None); computed in `precision` (bf16/fp16 autocast)."""
    from hyrax_mlops.engine.precision import Compute

    compute = Compute(resolve_device(device), precision, channels_last)
    compute.prepare(model).eval()
    chunks, prob_chunks = [], []
    with compute.inference():
        for batch in tqdm(prefetch(loader), desc="infer", unit="batch", total=len(loader)):
            z, probs = model_outputs(model, compute.batch(batch))
            chunks.append(z.float().cpu().numpy())
            if probs is not None:
                prob_chunks.append(probs.float().cpu().numpy())
    emb = np.concatenate(chunks).astype(np.float32, copy=False)  # no second copy of them all
    return emb, (np.concatenate(prob_chunks).astype(np.float32, copy=False)
                 if prob_chunks else None)


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
