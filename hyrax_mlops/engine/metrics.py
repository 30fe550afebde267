"""Classification metrics from predicted probabilities, as MLflow metric names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                           prefix: str = "") -> dict[str, float]:
    """Accuracy, balanced accuracy, per-class precision/recall, and ROC AUC (binary, or
    one-vs-rest macro when every class is present)."""
    import warnings

    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    if len(labels) == 0:
        return {}
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():  # a small split may hold a single class: that is allowed
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, pred))
    out = {f"{prefix}accuracy": float(accuracy_score(labels, pred)),
           f"{prefix}balanced_accuracy": balanced}
    precision, recall, _, _ = precision_recall_fscore_support(
        labels, pred, labels=list(range(len(classes))), zero_division=0)
    for name, p, r in zip(classes, precision, recall, strict=True):
        out[f"{prefix}precision_{name}"] = float(p)
        out[f"{prefix}recall_{name}"] = float(r)
    present = np.unique(labels)
    if len(classes) == 2 and len(present) == 2:
        out[f"{prefix}roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    elif len(classes) > 2 and len(present) == len(classes):
        out[f"{prefix}roc_auc"] = float(roc_auc_score(labels, probs, multi_class="ovr"))
    return out
