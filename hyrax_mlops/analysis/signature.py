"""What the index holds so that a look-alike search from an artefact finds more of its kind.

A model's embedding describes what a stamp shows, and averages away what went wrong with it:
a satellite trail or a cosmic ray barely moves a galaxy's latent vector (on the discovery
benchmark an artefact's 10 latent neighbours are 3 % of its kind). The stamp statistics
(analysis.stamp_statistics) describe exactly that. So the index joins the two:

- the embedding, centred on the indexed objects' mean and divided by their RMS distance from
  it (a typical object at distance 1; a model whose embeddings spread along one line keeps
  their magnitudes, which a unit vector would throw away);
- then for each statistic its significance beyond the ordinary, WEIGHT x log(1 + max(z -
  THRESHOLD, 0)), z the robust z over the indexed objects.

An ordinary object has zeros there and is found by its embedding alone; an object that departs
carries the pattern of statistics it departs in, and a clear departure (z = 5: 2 x log 4 = 2.8)
outweighs the spread of what the stamps show, so its neighbours are the objects departing the
same way (0.54 of an artefact's 10 neighbours share its kind on that benchmark). Nothing here
knows any kind of artefact: only which statistics depart, and how far.

The populations' centre and spreads are kept (`Signature.to_dict`) so a query made later (an
external cutout, a plain embedding) is placed as the indexed objects were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hyrax_mlops.analysis.stamp_statistics import robust_scale, robust_z

THRESHOLD = 2.0  # robust z below this is ordinary: it adds nothing to the vector
WEIGHT = 2.0  # of the significances against the embedding's typical spread (1)
NOT_STATISTICS = ("object_id", "reconstruction_error")  # columns of the table that are not


@dataclass(frozen=True)
class Signature:
    """How an object becomes an index vector: the statistics' names, in order, with the
    median and spread of each, and the embeddings' centre and RMS spread about it, all over
    the population they were fitted on."""

    names: tuple[str, ...]
    median: tuple[float, ...]
    scale: tuple[float, ...]
    centre: tuple[float, ...]
    spread: float

    @classmethod
    def fit(cls, statistics: pd.DataFrame, embeddings: np.ndarray) -> Signature:
        """From a table of stamp statistics (one column each; object_id and the
        reconstruction error, which the statistics already hold as residual_energy, left
        out) and the same objects' embeddings."""
        names = tuple(sorted(c for c in statistics.columns if c not in NOT_STATISTICS))
        fitted = [robust_scale(statistics[c].to_numpy(np.float64)) for c in names]
        emb = np.asarray(embeddings, np.float64)
        centre = emb.mean(axis=0)
        spread = float(np.sqrt(((emb - centre) ** 2).sum(axis=1).mean())) or 1.0
        return cls(names, tuple(m for m, _ in fitted), tuple(s for _, s in fitted),
                   tuple(float(c) for c in centre), spread)

    def values(self, statistics: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
        """(n, len(names)) float32: WEIGHT x log(1 + max(z - THRESHOLD, 0)) of each
        statistic; one that could not be measured (NaN, or absent from `statistics`) counts
        as ordinary."""
        n = len(next(iter(statistics.values())) if isinstance(statistics, dict)
                else statistics)
        z = np.stack([robust_z(np.asarray(statistics[name], np.float64), m, s)
                      if name in statistics else np.full(n, np.nan)
                      for name, m, s in zip(self.names, self.median, self.scale, strict=True)],
                     axis=1)
        return (WEIGHT * np.log1p(np.clip(np.nan_to_num(z, nan=0.0) - THRESHOLD, 0, None))
                ).astype(np.float32)

    def join(self, embeddings: np.ndarray,
             statistics: pd.DataFrame | dict[str, np.ndarray] | None) -> np.ndarray:
        """Index vectors: the embeddings centred and scaled, then the statistics' values
        (zeros without statistics: a plain embedding departs in nothing)."""
        emb = np.atleast_2d(np.asarray(embeddings, np.float64))
        placed = (emb - np.asarray(self.centre)) / self.spread
        values = (self.values(statistics) if statistics is not None
                  else np.zeros((len(emb), len(self.names)), np.float32))
        return np.hstack([placed, values]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "median": list(self.median),
                "scale": list(self.scale), "threshold": THRESHOLD, "weight": WEIGHT,
                "centre": list(self.centre), "spread": self.spread}

    @classmethod
    def from_dict(cls, d: dict) -> Signature:
        return cls(tuple(d["names"]), tuple(d["median"]), tuple(d["scale"]),
                   tuple(d["centre"]), float(d["spread"]))
