"""Self-supervised representation learning on cutouts: SimCLR and BYOL.

Both see two augmented views of each stamp (`hyrax_mlops.data.augment`: rotations/flips,
sub-pixel shifts, per-band flux scale and noise, PSF-like blur, band masking) and learn
features that agree across views. `embed` returns the backbone's features, the representation
that transfers; the projection heads exist only for the loss.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from hyrax_mlops.data.augment import DEFAULT, Augment
from hyrax_mlops.models import MODELS
from hyrax_mlops.models.backbones import build_backbone


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, d_out))


class _TwoViews(nn.Module):
    modalities = ("image",)

    def __init__(self, input_shape: Sequence[int], backbone: str, width: int,
                 augmentations: Sequence[str], strength: float) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.backbone = build_backbone(backbone, self.input_shape[0], width)
        self.augment = Augment(augmentations, strength)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.augment(x), self.augment(x)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone(batch["image"])


@MODELS.register("simclr")
class SimCLR(_TwoViews):
    """SimCLR (Chen et al. 2020): NT-Xent over the 2n views of a batch; every other stamp in
    the batch is a negative, so larger batches help."""

    def __init__(self, input_shape: Sequence[int], backbone: str = "conv", width: int = 32,
                 projection_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.2,
                 augmentations: Sequence[str] = DEFAULT, strength: float = 1.0) -> None:
        super().__init__(input_shape, backbone, width, augmentations, strength)
        self.projector = _mlp(self.backbone.out_dim, hidden_dim, projection_dim)
        self.temperature = float(temperature)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = self.views(batch["image"])
        z = F.normalize(self.projector(self.backbone(torch.cat([a, b]))), dim=1)
        n = len(a)
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        loss = F.cross_entropy(sim, target)
        with torch.no_grad():
            top1 = (sim.argmax(dim=1) == target).float().mean()
        return {"loss": loss, "pair_accuracy": top1}


@MODELS.register("byol")
class BYOL(_TwoViews):
    """BYOL (Grill et al. 2020): an online network predicts a slowly moving target network's
    projection of the other view; no negatives. The target follows the online weights by an
    exponential moving average after every optimiser step (`after_step`)."""

    def __init__(self, input_shape: Sequence[int], backbone: str = "conv", width: int = 32,
                 projection_dim: int = 128, hidden_dim: int = 512, momentum: float = 0.99,
                 augmentations: Sequence[str] = DEFAULT, strength: float = 1.0) -> None:
        super().__init__(input_shape, backbone, width, augmentations, strength)
        self.projector = _mlp(self.backbone.out_dim, hidden_dim, projection_dim)
        self.predictor = _mlp(projection_dim, hidden_dim, projection_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = float(momentum)

    def _loss(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = self.views(batch["image"])
        both = torch.cat([a, b])
        p = self.predictor(self.projector(self.backbone(both)))
        with torch.no_grad():
            self.target_backbone.train(self.training)
            self.target_projector.train(self.training)
            z = self.target_projector(self.target_backbone(both))
        n = len(a)
        loss = self._loss(p[:n], z[n:]) + self._loss(p[n:], z[:n])
        return {"loss": loss}

    @torch.no_grad()
    def after_step(self) -> None:
        """Move the target networks towards the online ones."""
        for online, target in ((self.backbone, self.target_backbone),
                               (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters(), strict=True):
                pt.mul_(self.momentum).add_(po.detach(), alpha=1 - self.momentum)
            for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
                bt.copy_(bo)
