"""A convolutional autoencoder: the default model for learning a latent space of cutouts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from hyrax_mlops.models import MODELS


@MODELS.register("conv_autoencoder")
class ConvAutoencoder(nn.Module):
    """Strided-conv encoder to `latent_dim`, mirrored transposed-conv decoder, MSE loss.

    Each of `widths` halves the stamp size, so height and width must be divisible by
    2 ** len(widths).
    """

    def __init__(self, input_shape: Sequence[int], latent_dim: int = 64,
                 widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        channels, height, width = (int(s) for s in input_shape)
        factor = 2 ** len(widths)
        if height % factor or width % factor:
            raise ValueError(
                f"stamps of {height}x{width} are not divisible by 2**len(widths) = {factor}. "
                "Fix: use fewer model.widths or a stamp size divisible by it."
            )
        self.input_shape = (channels, height, width)
        self.latent_dim = int(latent_dim)
        enc: list[nn.Module] = []
        c = channels
        for w in widths:
            enc += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GELU()]
            c = w
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self._grid = (c, height // factor, width // factor)
        flat = c * self._grid[1] * self._grid[2]
        self.to_latent = nn.Linear(flat, self.latent_dim)
        self.from_latent = nn.Linear(self.latent_dim, flat)
        dec: list[nn.Module] = []
        for w in list(widths[-2::-1]) + [widths[0]]:
            dec += [nn.ConvTranspose2d(c, w, 4, stride=2, padding=1), nn.GELU()]
            c = w
        self.decoder = nn.Sequential(*dec, nn.Conv2d(c, channels, 3, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(-1, *self._grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["image"]
        return F.mse_loss(self(x), x)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(batch["image"])

    def reconstruct(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"])
