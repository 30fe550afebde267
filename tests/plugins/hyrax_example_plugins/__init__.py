"""Example third-party plugins for hyrax-mlops, each declaring its own config keys.

- source `example_tiles`: a regular grid of tiles cut from the real XDF image (the demo
  source's image), keys in `[download.example_tiles]`;
- model `example_linear_ae`: a one-hidden-layer linear autoencoder, keys in `[model]` (its
  constructor's keyword arguments);
- analysis `example_edges`: the share of each stamp's flux near its border (a neighbour cut by
  the stamp), keys in `[analyse]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hyrax_mlops.analysis.analyses import AnalysisContext, AnalysisResult
from hyrax_mlops.config import ComponentConfig, DownloadConfig
from hyrax_mlops.data.dataset import DatasetWriter
from hyrax_mlops.sources.xdf import BANDS, load_xdf_image


class TilesConfig(ComponentConfig):
    """`[download.example_tiles]`."""

    step: int = Field(96, ge=8)  # pixels between tile corners, along both axes
    min_flux: float = Field(0.0, ge=0)  # skip tiles whose summed pixels are below this


def tiles(cfg: DownloadConfig, out_dir: Path, ctx: object = None) -> dict[str, Any]:
    """Tiles of `download.stamp_size` pixels every `step` pixels, brightest first."""
    own = cfg.example_tiles
    rgb, sha = load_xdf_image()
    size = cfg.stamp_size
    cuts = []
    for y0 in range(0, rgb.shape[0] - size + 1, own.step):
        for x0 in range(0, rgb.shape[1] - size + 1, own.step):
            stamp = rgb[y0:y0 + size, x0:x0 + size, :].transpose(2, 0, 1)[:, ::-1, :]
            flux = float(stamp.sum())
            if flux >= own.min_flux:
                cuts.append((flux, x0, y0, stamp))
    cuts.sort(key=lambda c: -c[0])
    if cfg.limit:
        cuts = cuts[:cfg.limit]
    writer = DatasetWriter(out_dir, (3, size, size), BANDS, cfg.shard_size)
    for flux, x0, y0, stamp in cuts:
        writer.add({"object_id": f"TILE{y0:04d}{x0:04d}", "ra": np.nan, "dec": np.nan,
                    "x": x0 + size / 2, "y": y0 + size / 2, "flux": flux},
                   stamp.astype(np.float32))
    source = {"name": "example_tiles", "image": "skimage/data/hubble_deep_field.jpg",
              "sha256": sha, "step": own.step}
    return writer.close(source, requested=len(cuts))


tiles.config_class = TilesConfig


class LinearAutoencoder(nn.Module):
    """Flattened pixels -> `hidden` -> `latent_dim` -> back."""

    def __init__(self, input_shape, latent_dim: int = 8, hidden: int = 64) -> None:
        super().__init__()
        n = int(np.prod(input_shape))
        self.shape = tuple(input_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(),
                                     nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).view(-1, *self.shape)

    def training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["image"]
        return F.mse_loss(self(x), x)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch["image"])


class EdgesConfig(ComponentConfig):
    """`[analyse]` keys of `example_edges`."""

    edge_margin: int = Field(4, ge=1)  # pixels from the border that count as "edge"
    edge_threshold: float = Field(0.25, gt=0, le=1)  # share of flux flagging an object


def edges(ctx: AnalysisContext) -> AnalysisResult:
    """The share of each stamp's (positive) flux within `edge_margin` pixels of its border."""
    if ctx.images is None:
        return AnalysisResult(notes=["example_edges: this dataset stores no pixels"])
    cfg, m = ctx.cfg, ctx.cfg.edge_margin
    share = np.empty(len(ctx.ids))
    for start in range(0, len(ctx.ids), 256):
        rows = np.arange(start, min(start + 256, len(ctx.ids)))
        cubes = np.clip(np.asarray(ctx.images(rows), dtype=np.float64), 0, None)
        total = cubes.sum(axis=(1, 2, 3))
        inner = cubes[:, :, m:-m, m:-m].sum(axis=(1, 2, 3))
        share[rows] = np.where(total > 0, (total - inner) / np.where(total > 0, total, 1), 0)
    flagged = share >= cfg.edge_threshold
    return AnalysisResult(
        columns={"edge_fraction": share.astype(np.float32), "is_edge": flagged},
        metrics={"example_edges.n_flagged": int(flagged.sum()),
                 "example_edges.median_fraction": float(np.median(share))})


edges.config_class = EdgesConfig
