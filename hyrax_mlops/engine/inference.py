"""Embed every object of a dataset with a trained model, in batches, without gradients."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from hyrax_mlops.data.prefetch import prefetch
from hyrax_mlops.engine.loop import resolve_device, to_device


def embed_all(model: torch.nn.Module, loader, device: str = "cpu") -> np.ndarray:
    """float32 (n, dim) embeddings in the loader's order."""
    dev = resolve_device(device)
    model.to(dev).eval()
    chunks = []
    with torch.no_grad():
        for batch in tqdm(prefetch(loader), desc="infer", unit="batch", total=len(loader)):
            z = model.embed(to_device(batch, dev))
            chunks.append(z.reshape(len(z), -1).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)
