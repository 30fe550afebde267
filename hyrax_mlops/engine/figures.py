"""Figures a training run logs: the loss curve and inputs beside their reconstructions."""

from __future__ import annotations

from collections.abc import Sequence

from hyrax_mlops.quiet import headless_figures

headless_figures()
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


def confusion_matrix(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], title: str):
    """Counts of true (rows) against predicted (columns) classes, with row fractions."""
    from sklearn.metrics import confusion_matrix as cm

    m = cm(labels, probs.argmax(axis=1), labels=list(range(len(classes))))
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    return fig


def roc_curves(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], title: str):
    """One-vs-rest ROC curve per class present (the positive class only, when binary)."""
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    shown = [1] if len(classes) == 2 else range(len(classes))
    for k in shown:
        truth = labels == k
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, probs[:, k])
        ax.plot(fpr, tpr, label=f"{classes[k]} (AUC {auc(fpr, tpr):.3f})")
    if not ax.get_lines():
        ax.text(0.5, 0.5, "one class only in this split", ha="center")
    else:
        ax.legend(fontsize=8)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    fig.tight_layout()
    return fig
