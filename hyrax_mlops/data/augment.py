"""Astronomy-aware augmentations of stamp batches, applied on the fly on the batch's device.

Each one respects what a survey stamp is: the sky has no preferred orientation (90° rotations,
flips), sources are never perfectly centred (sub-pixel shifts), calibration and depth vary per
band (flux scale, noise), seeing varies (PSF-like blur), and a band can be missing (masking).
None of them mixes bands: no colour jitter, no hue rotation.

`AUGMENTATIONS` is the registry; `Augment(names, strength)` composes them for a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from hyrax_mlops.registry import Registry

AugmentFn = Callable[[torch.Tensor, torch.Generator | None, float], torch.Tensor]
AUGMENTATIONS: Registry[AugmentFn] = Registry("augmentation")


def _rand(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen).to(device)


@AUGMENTATIONS.register("dihedral")
def dihedral(x: torch.Tensor, gen: torch.Generator | None, strength: float) -> torch.Tensor:
    """One of the 8 rotations/flips per stamp (square stamps rotate; others only flip)."""
    k = torch.randint(0, 4, (len(x),), generator=gen)
    flip = torch.randint(0, 2, (len(x),), generator=gen).bool()
    square = x.shape[-1] == x.shape[-2]
    out = x.clone()
    for i in range(len(x)):
        s = x[i]
        if square and k[i]:
            s = torch.rot90(s, int(k[i]), dims=(-2, -1))
        if flip[i]:
            s = torch.flip(s, dims=(-1,))
        out[i] = s
    return out


@AUGMENTATIONS.register("shift")
def shift(x: torch.Tensor, gen: torch.Generator | None, strength: float) -> torch.Tensor:
    """Sub-pixel translation up to `strength` pixels (bilinear, edges replicated)."""
    n, _, h, w = x.shape
    d = (torch.rand(n, 2, generator=gen) * 2 - 1) * strength
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = d[:, 0] * 2 / w
    theta[:, 1, 2] = d[:, 1] * 2 / h
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@AUGMENTATIONS.register("flux_scale")
def flux_scale(x: torch.Tensor, gen: torch.Generator | None, strength: float) -> torch.Tensor:
    """Each band scaled by its own factor in [1 - 0.1·strength, 1 + 0.1·strength]."""
    n, c = x.shape[:2]
    f = 1 + (torch.rand(n, c, 1, 1, generator=gen) * 2 - 1) * 0.1 * strength
    return x * f.to(x.device, x.dtype)


@AUGMENTATIONS.register("noise")
def noise(x: torch.Tensor, gen: torch.Generator | None, strength: float) -> torch.Tensor:
    """Gaussian noise per band, up to 0.05·strength of that band's own spread."""
    n, c = x.shape[:2]
    sigma = x.flatten(2).std(dim=2).view(n, c, 1, 1)
    level = torch.rand(n, c, 1, 1, generator=gen).to(x.device, x.dtype) * 0.05 * strength
    return x + torch.randn(x.shape, generator=gen).to(x.device, x.dtype) * sigma * level


@AUGMENTATIONS.register("blur")
def blur(x: torch.Tensor, gen: torch.Generator | None, strength: float) -> torch.Tensor:
    """A Gaussian PSF of sigma up to `strength` pixels, the same for every band of a stamp
    (seeing is one per exposure), applied with a depthwise convolution."""
    n, c, h, w = x.shape
    sigmas = torch.rand(n, generator=gen) * strength
    radius = max(1, math.ceil(3 * strength))
    r = torch.arange(-radius, radius + 1, dtype=x.dtype)
    out = torch.empty_like(x)
    for i in range(n):
        s = float(sigmas[i])
        if s < 0.2:
            out[i] = x[i]
            continue
        g = torch.exp(-(r ** 2) / (2 * s * s))
        k = (g[:, None] * g[None, :]) / (g.sum() ** 2)
        k = k.to(x.device).expand(c, 1, -1, -1)
        padded = F.pad(x[i:i + 1], (radius,) * 4, mode="replicate")
        out[i] = F.conv2d(padded, k, groups=c)[0]
    return out


@AUGMENTATIONS.register("mask_band")
def mask_band(x: torch.Tensor, gen: torch.Generator | None, strength: float) -> torch.Tensor:
    """With probability 0.2·strength, one band of a stamp set to zero (a missing filter)."""
    n, c = x.shape[:2]
    if c < 2:
        return x
    hit = torch.rand(n, generator=gen) < 0.2 * strength
    band = torch.randint(0, c, (n,), generator=gen)
    keep = torch.ones(n, c, 1, 1)
    keep[hit, band[hit]] = 0
    return x * keep.to(x.device, x.dtype)


DEFAULT = ("dihedral", "shift", "flux_scale", "noise", "blur", "mask_band")


class Augment:
    """The named augmentations applied in order to a (n, bands, h, w) batch."""

    def __init__(self, names: Sequence[str] = DEFAULT, strength: float = 1.0) -> None:
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; "
                             f"choose from: {', '.join(AUGMENTATIONS.names())}")
        self.names, self.strength = list(names), float(strength)
        self._fns = [AUGMENTATIONS.get(n) for n in names]

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        for fn in self._fns:
            x = fn(x, gen, self.strength)
        return x
