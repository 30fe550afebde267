"""What the index holds so that a look-alike search from an artefact finds more of its kind.

A model's embedding describes what a stamp shows, and averages away what went wrong with it:
a satellite trail or a cosmic ray barely moves a galaxy's latent vector (on the discovery
benchmark an artefact's 10 latent neighbours are 3 % of its kind). The stamp statistics
(analysis.stamp_statistics) describe exactly that. So the index joins the two: the unit
embedding, then for each statistic its significance beyond the ordinary,
log(1 + max(z - THRESHOLD, 0)) with z the robust z over the indexed objects. An ordinary
object has zeros there and is found by its embedding alone; an object that departs carries
the pattern of statistics it departs in, and its neighbours are the objects departing the same
way (0.55 of an artefact's neighbours share its kind on that benchmark). Nothing here knows
any kind of artefact: only which statistics depart, and how far.

The population's median and spread of each statistic are kept (`Signature.to_dict`) so a
query measured later (an external cutout) is scaled as the indexed objects were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hyrax_mlops.analysis.stamp_statistics import robust_scale, robust_z

THRESHOLD = 2.0  # robust z below this is ordinary: it adds nothing to the vector
NOT_STATISTICS = ("object_id", "reconstruction_error")  # columns of the table that are not


@dataclass(frozen=True)
class Signature:
    """How statistics become the joined part of a vector: their names, in order, and the
    median and spread of each over the population they were fitted on."""

    names: tuple[str, ...]
    median: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, statistics: pd.DataFrame) -> Signature:
        """From a table of stamp statistics (one column each; object_id and the
        reconstruction error, which the statistics already hold as residual_energy, left out)."""
        names = tuple(sorted(c for c in statistics.columns if c not in NOT_STATISTICS))
        fitted = [robust_scale(statistics[c].to_numpy(np.float64)) for c in names]
        return cls(names, tuple(m for m, _ in fitted), tuple(s for _, s in fitted))

    def values(self, statistics: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
        """(n, len(names)) float32: log(1 + max(z - THRESHOLD, 0)) of each statistic; one
        that could not be measured (NaN, or absent from `statistics`) counts as ordinary."""
        n = len(next(iter(statistics.values())) if isinstance(statistics, dict)
                else statistics)
        z = np.stack([robust_z(np.asarray(statistics[name], np.float64), m, s)
                      if name in statistics else np.full(n, np.nan)
                      for name, m, s in zip(self.names, self.median, self.scale, strict=True)],
                     axis=1)
        return np.log1p(np.clip(np.nan_to_num(z, nan=0.0) - THRESHOLD, 0, None)).astype(
            np.float32)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "median": list(self.median),
                "scale": list(self.scale), "threshold": THRESHOLD}

    @classmethod
    def from_dict(cls, d: dict) -> Signature:
        return cls(tuple(d["names"]), tuple(d["median"]), tuple(d["scale"]))


def unit(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its length (a zero row stays zero)."""
    v = np.asarray(vectors, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)


def joined(embeddings: np.ndarray, signature_values: np.ndarray) -> np.ndarray:
    """The unit embeddings, then the signature's values."""
    return np.hstack([unit(embeddings), signature_values]).astype(np.float32)
