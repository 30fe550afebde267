"""A grid of cutouts with a caption each: the way to look at a list of objects."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyrax_mlops.data.display import stretch  # noqa: E402


def cutout_grid(cubes: np.ndarray, titles: Sequence[str], suptitle: str = "",
                ncols: int = 5):
    """Figure of (n, bands, h, w) cutouts, asinh-stretched, `titles[i]` under cutout i."""
    n = len(cubes)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, cube, title in zip(axes.ravel(), cubes, titles, strict=False):
        ax.imshow(stretch(cube), interpolation="nearest")
        ax.set_title(title, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
