"""Exact k-nearest neighbours in numpy, the reference every index is measured against.

Distances follow the backends' conventions: cosine `1 - cos`, l2 squared euclidean,
ip `1 - dot`. Chunked over queries so a million vectors fit in memory.
"""

from __future__ import annotations

import numpy as np


def exact_knn(x: np.ndarray, q: np.ndarray, k: int, metric: str = "cosine",
              chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each (len(q), k), nearest first; ties broken by index."""
    x = np.asarray(x, np.float32)
    q = np.asarray(q, np.float32)
    k = min(k, len(x))
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    elif metric not in ("l2", "ip"):
        raise ValueError(f"unknown metric '{metric}'; choose cosine, l2 or ip")
    x_sq = (x.astype(np.float64) ** 2).sum(1) if metric == "l2" else None
    out_i = np.empty((len(q), k), np.int64)
    out_d = np.empty((len(q), k), np.float64)
    for s in range(0, len(q), chunk):
        qc = q[s:s + chunk]
        dot = qc.astype(np.float64) @ x.T.astype(np.float64)
        if metric == "l2":
            dist = (qc.astype(np.float64) ** 2).sum(1)[:, None] - 2 * dot + x_sq[None]
        else:
            dist = 1.0 - dot
        part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < len(x) else \
            np.tile(np.arange(len(x)), (len(qc), 1))
        d = np.take_along_axis(dist, part, 1)
        order = np.lexsort((part, d), axis=1)
        out_i[s:s + chunk] = np.take_along_axis(part, order, 1)
        out_d[s:s + chunk] = np.take_along_axis(d, order, 1)
    return out_i, out_d
