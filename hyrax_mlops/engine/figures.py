"""Figures a training run logs: the loss curve and inputs beside their reconstructions."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyrax_mlops.data.display import linear  # noqa: E402
from hyrax_mlops.engine.loop import EpochStats  # noqa: E402


def loss_curve(history: Sequence[EpochStats]):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h.epoch for h in history]
    ax.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax.plot(epochs, [h.val_loss for h in history], "s-", label="val")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="Loss per epoch")
    ax.legend()
    fig.tight_layout()
    return fig


def reconstructions(inputs: np.ndarray, outputs: np.ndarray, ids: Sequence[str]):
    """Top row: inputs; bottom row: reconstructions, each pair on the input's scale."""
    n = len(inputs)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        for row, img in enumerate((linear(inputs[i]), linear(outputs[i], inputs[i]))):
            axes[row, i].imshow(img)
            axes[row, i].axis("off")
        axes[0, i].set_title(str(ids[i]), fontsize=7)
    fig.suptitle("inputs (top) and reconstructions (bottom), normalised space")
    fig.tight_layout()
    return fig
