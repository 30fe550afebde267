"""Multimodal classification: one encoder per modality, fused, trained end to end.

Images go through a CNN backbone, light curves through a GRU (padded points with a mask),
spectra through a 1D CNN (resampled flux with a mask), catalog features through an MLP. Each
present modality becomes a token; `fusion = "attention"` lets a learned query attend over the
present tokens, `"concat"` concatenates them (absent ones zeroed, with presence flags). An
object may lack any modality: a learned "nothing" token keeps it classifiable, and modality
dropout in training teaches the model not to rely on one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from hyrax_mlops.models import MODELS
from hyrax_mlops.models.backbones import build_backbone
from hyrax_mlops.models.classifier import ClassifierBase

KINDS = ("image", "lightcurve", "spectrum", "tabular")


class _LightCurve(nn.Module):
    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.inp = nn.Linear(dim_in, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(F.gelu(self.inp(x)))
        w = mask.unsqueeze(-1)
        return (h * w).sum(1) / w.sum(1).clamp(min=1)  # mean over the real points


class _Spectrum(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        c = max(8, dim // 4)
        self.net = nn.Sequential(
            nn.Conv1d(3, c, 7, padding=3), nn.GELU(), nn.MaxPool1d(4),
            nn.Conv1d(c, 2 * c, 5, padding=2), nn.GELU(), nn.MaxPool1d(4),
            nn.Conv1d(2 * c, dim, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool1d(1),
            nn.Flatten())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x * mask.unsqueeze(1), mask.unsqueeze(1)], dim=1))


@MODELS.register("fusion_classifier")
class FusionClassifier(ClassifierBase):
    """Classifies from whichever of image, light curve, spectrum and catalog features each
    object has (`modalities`: which to use; [] = all the dataset offers)."""

    modalities = KINDS

    def __init__(self, input_shape: Sequence[int], classes: Sequence[str] = ("0", "1"),
                 class_counts: Sequence[int] | None = None, features: Sequence[str] = (),
                 lightcurve_dim: int = 0, spectrum_len: int = 0,
                 use: Sequence[str] = (), dim: int = 64, fusion: str = "attention",
                 modality_dropout: float = 0.2, backbone: str = "conv", width: int = 16,
                 class_weights: str | Sequence[float] = "balanced") -> None:
        super().__init__()
        if fusion not in ("attention", "concat"):
            raise ValueError(f"model.fusion must be 'attention' or 'concat', not '{fusion}'")
        offered = {"image": bool(input_shape), "lightcurve": lightcurve_dim > 0,
                   "spectrum": spectrum_len > 0, "tabular": bool(features)}
        unknown = [u for u in use if u not in KINDS]
        if unknown:
            raise ValueError(f"model.use names {unknown}; choose from {', '.join(KINDS)}")
        self.kinds = [k for k in KINDS if offered[k] and (not use or k in use)]
        if not self.kinds:
            raise ValueError("fusion_classifier found no modality in this dataset: it needs "
                             "stamps, light curves, spectra or data.features")
        self._init_classes(classes, class_counts, class_weights)
        self.fusion, self.p_drop, self.dim = fusion, float(modality_dropout), int(dim)
        enc = nn.ModuleDict()
        if "image" in self.kinds:
            bb = build_backbone(backbone, int(input_shape[0]), width)
            enc["image"] = nn.Sequential(bb, nn.Linear(bb.out_dim, dim))
        if "lightcurve" in self.kinds:
            enc["lightcurve"] = _LightCurve(lightcurve_dim, dim)
        if "spectrum" in self.kinds:
            enc["spectrum"] = _Spectrum(dim)
        if "tabular" in self.kinds:
            enc["tabular"] = nn.Sequential(nn.Linear(2 * len(features), dim), nn.GELU(),
                                           nn.Linear(dim, dim))
        self.encoders = enc
        self.kind_embedding = nn.Parameter(torch.zeros(len(self.kinds) + 1, dim))
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attention = nn.MultiheadAttention(dim, num_heads=4, batch_first=True)
        fused = dim if fusion == "attention" else dim * len(self.kinds) + len(self.kinds)
        self.head = nn.Sequential(nn.LayerNorm(fused), nn.Linear(fused, dim), nn.GELU(),
                                  nn.Linear(dim, len(self.classes)))

    def _tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (n, kinds + 1, dim), present (n, kinds + 1)); the last token is "nothing"."""
        n = len(batch["row"])
        tokens, present = [], []
        for i, kind in enumerate(self.kinds):
            if kind == "image":
                z, here = self.encoders[kind](batch["image"]), torch.ones(n)
            elif kind == "tabular":
                z = self.encoders[kind](torch.cat([batch["tabular"], batch["tabular_mask"]], 1))
                here = batch["tabular_mask"].amax(1)
            else:
                mask = batch[f"{kind}_mask"]
                z, here = self.encoders[kind](batch[kind], mask), mask.amax(1)
            tokens.append(z + self.kind_embedding[i])
            present.append(here.to(z.device))
        tokens.append(self.kind_embedding[-1].expand(n, -1))
        present.append(torch.ones(n, device=tokens[0].device))
        present_t = torch.stack(present, 1).bool()
        if self.training and self.p_drop > 0:  # hide some modalities, never "nothing"
            drop = torch.rand(present_t.shape, device=present_t.device) < self.p_drop
            drop[:, -1] = False
            present_t = present_t & ~drop
        return torch.stack(tokens, 1), present_t

    def _fused(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, present = self._tokens(batch)
        if self.fusion == "attention":
            q = self.query.expand(len(tokens), -1, -1)
            out, _ = self.attention(q, tokens, tokens, key_padding_mask=~present)
            return out[:, 0]
        body = tokens[:, :-1] * present[:, :-1].unsqueeze(-1)
        return torch.cat([body.flatten(1), present[:, :-1].float()], dim=1)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self._fused(batch))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._fused(batch)
