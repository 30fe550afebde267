"""Exact k-nearest neighbours in numpy, the reference every index is measured against.

Distances follow the backends' conventions: cosine `1 - cos`, l2 squared euclidean,
ip `1 - dot`. The vectors are read in blocks, each converted to float64 once for every
query, and the running k best are merged block by block: memory stays at one block (not a
float64 copy of all vectors per query chunk), so ten million vectors fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ENTRIES = 1 << 24  # distances computed at once (queries x block rows): 128 MB of float64


def _normalised(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)


def exact_knn(x: np.ndarray, q: np.ndarray, k: int, metric: str = "cosine",
              chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each (len(q), k), nearest first; ties broken by index.
    `chunk` queries are compared at a time."""
    if metric not in ("cosine", "l2", "ip"):
        raise ValueError(f"unknown metric '{metric}'; choose cosine, l2 or ip")
    q = np.asarray(q, np.float64)
    q = _normalised(q) if metric == "cosine" else q
    k = min(k, len(x))
    best_i = np.zeros((len(q), 0), np.int64)
    best_d = np.zeros((len(q), 0), np.float64)
    block = max(k, _ENTRIES // max(1, min(chunk, len(q))))
    for b in range(0, len(x), block):
        xb = np.asarray(x[b:b + block])
        xb = _normalised(xb) if metric == "cosine" else xb.astype(np.float64)
        xb_sq = (xb ** 2).sum(1) if metric == "l2" else None
        parts_i, parts_d = [], []
        for s in range(0, len(q), chunk):
            qc = q[s:s + chunk]
            dot = qc @ xb.T
            dist = (qc ** 2).sum(1)[:, None] - 2 * dot + xb_sq[None] if metric == "l2" \
                else 1.0 - dot
            kb = min(k, len(xb))
            part = np.argpartition(dist, kb - 1, axis=1)[:, :kb] if kb < len(xb) else \
                np.tile(np.arange(len(xb)), (len(qc), 1))
            parts_i.append(part + b)
            parts_d.append(np.take_along_axis(dist, part, 1))
        cand_i = np.concatenate([best_i, np.concatenate(parts_i)], axis=1)
        cand_d = np.concatenate([best_d, np.concatenate(parts_d)], axis=1)
        order = np.lexsort((cand_i, cand_d), axis=1)[:, :k]
        best_i = np.take_along_axis(cand_i, order, 1)
        best_d = np.take_along_axis(cand_d, order, 1)
    return best_i, best_d


# distances nearer than this (times their scale) are one distance to an index computing in
# float32: eight float32 epsilons
_TIED = 8 * float(np.finfo(np.float32).eps)


def _distances(rows: np.ndarray, q: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 distances from one query to `rows` as `exact_knn` measures them, and the scale
    of float32's error in each (1 for cosine; the squared norms for l2, their product for ip)."""
    rows, q = np.asarray(rows, np.float64), np.asarray(q, np.float64)
    if metric == "cosine":
        return 1.0 - _normalised(rows) @ _normalised(q[None])[0], np.ones(len(rows))
    norms, q_norm = np.linalg.norm(rows, axis=1), np.linalg.norm(q)
    if metric == "l2":
        return q_norm ** 2 - 2 * rows @ q + norms ** 2, q_norm ** 2 + norms ** 2
    return 1.0 - rows @ q, q_norm * norms


def _rows_of(found: Sequence[Sequence], ids: np.ndarray | None, k: int) -> list[np.ndarray]:
    """Each query's first k answers as rows of the vectors (answers given as `ids`, looked up
    with one hash of the answers, not of every id; an id that is not there is dropped)."""
    if ids is None:
        return [np.unique(np.asarray(list(f)[:k], np.int64)) for f in found]
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = sorted({str(i) for f in found for i in list(f)[:k]})
    where = np.flatnonzero(pc.is_in(pa.array(ids), value_set=pa.array(wanted, pa.string()))
                           .to_numpy(zero_copy_only=False))
    row_of = {str(ids[r]): r for r in where}
    return [np.unique(np.asarray([row_of[i] for i in map(str, list(f)[:k]) if i in row_of],
                                 np.int64)) for f in found]


def recall_at_k(x: np.ndarray, q: np.ndarray, found: Sequence[Sequence], k: int,
                metric: str = "cosine", ids: np.ndarray | None = None) -> float:
    """Recall@k of what an index returned for queries `q` (per query: rows of `x`, or their
    `ids`) against exact search: an answer counts when it is as near as the exact k-th
    nearest, to what float32 distances can tell apart. Dense embeddings have more rows that
    near than k (a catalogue's five magnitudes embedded: the 10th neighbour 6e-7 away in
    cosine at 1M, 4e-8 at 10M), and matching the exact k's ids alone gave 0.89 at 1M and 0.43
    at 10M to an index whose answers were as near as the exact ones."""
    k = min(k, len(x))
    _, dist = exact_knn(x, q, k, metric)
    hits = 0
    for query, rows, kth in zip(q, _rows_of(found, ids, k), dist[:, -1], strict=True):
        if len(rows):
            d, scale = _distances(x[rows], query, metric)
            hits += min(k, int(np.sum(d <= kth + _TIED * scale)))
    return hits / (k * len(q))
