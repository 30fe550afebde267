"""Supervised classification of stamps (real/bogus, dwarf or not, morphology) from a catalog
column of labels (`data.label_column`).

Rare classes are common in astronomy: `class_weights = "balanced"` weighs the loss by inverse
class frequency in the training split (the train stage passes `classes` and `class_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from hyrax_mlops.data.augment import Augment
from hyrax_mlops.models import MODELS
from hyrax_mlops.models.backbones import build_backbone


def class_weight_tensor(class_weights: str | Sequence[float],
                        class_counts: Sequence[int] | None, n_classes: int) -> torch.Tensor:
    """Per-class loss weights: "balanced" (n / (k * count)), "none", or explicit numbers."""
    if isinstance(class_weights, str):
        if class_weights == "none" or not class_counts:
            return torch.ones(n_classes)
        if class_weights != "balanced":
            raise ValueError(f"model.class_weights must be 'balanced', 'none' or a list of "
                             f"{n_classes} numbers, not '{class_weights}'")
        counts = torch.tensor([max(int(c), 1) for c in class_counts], dtype=torch.float32)
        return counts.sum() / (len(counts) * counts)
    if len(class_weights) != n_classes:
        raise ValueError(f"model.class_weights has {len(class_weights)} numbers for "
                         f"{n_classes} classes")
    return torch.tensor([float(w) for w in class_weights])


class ClassifierBase(nn.Module):
    """What every classifier shares: its classes, a class-weighted cross-entropy with the
    batch accuracy beside it, and probabilities. Subclasses define `logits(batch)`, and may
    change a training batch first (`training_input`, e.g. augmentations)."""

    needs_labels = True

    def _init_classes(self, classes: Sequence[str], class_counts: Sequence[int] | None,
                      class_weights: str | Sequence[float]) -> None:
        self.classes = [str(c) for c in classes]
        self.register_buffer("class_weight",
                             class_weight_tensor(class_weights, class_counts, len(self.classes)))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_input(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logits(self.training_input(batch))
        loss = F.cross_entropy(logits, batch["label"], weight=self.class_weight)
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class probabilities, (n, len(classes))."""
        return torch.softmax(self.logits(batch), dim=1)


@MODELS.register("stamp_classifier")
class StampClassifier(ClassifierBase):
    """A backbone (ResNet-18-style by default) and a linear head over `classes`."""

    modalities = ("image",)

    def __init__(self, input_shape: Sequence[int], classes: Sequence[str] = ("0", "1"),
                 class_counts: Sequence[int] | None = None, backbone: str = "resnet18",
                 width: int = 16, class_weights: str | Sequence[float] = "balanced",
                 dropout: float = 0.1, augmentations: Sequence[str] = ("dihedral", "shift"),
                 strength: float = 1.0) -> None:
        super().__init__()
        self._init_classes(classes, class_counts, class_weights)
        self.backbone = build_backbone(backbone, int(input_shape[0]), width)
        self.head = nn.Sequential(nn.Dropout(dropout),
                                  nn.Linear(self.backbone.out_dim, len(self.classes)))
        self.augment = Augment(augmentations, strength) if augmentations else None

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.backbone(batch["image"]))

    def training_input(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not (self.training and self.augment is not None):
            return batch
        with torch.no_grad():
            return {**batch, "image": self.augment(batch["image"])}

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone(batch["image"])


@MODELS.register("tabular_classifier")
class TabularClassifier(ClassifierBase):
    """An MLP over catalog features (`data.features`) and their missing-value masks."""

    modalities = ("tabular",)

    def __init__(self, input_shape: Sequence[int], features: Sequence[str] = (),
                 classes: Sequence[str] = ("0", "1"), class_counts: Sequence[int] | None = None,
                 hidden: Sequence[int] = (128, 128), dropout: float = 0.1,
                 class_weights: str | Sequence[float] = "balanced") -> None:
        super().__init__()
        if not features:
            raise ValueError("tabular_classifier reads catalog features: set data.features, "
                             "e.g. [\"log10:P_1\", \"A_1\"]")
        self.features = list(features)
        self._init_classes(classes, class_counts, class_weights)
        layers: list[nn.Module] = []
        width = 2 * len(self.features)  # values and masks
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, len(self.classes))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat([batch["tabular"], batch["tabular_mask"]], dim=1))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(batch))
