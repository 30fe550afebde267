"""A grid of cutouts with a caption each: the way to look at a list of objects; and one
object's residual map as a small PNG, to show beside its cutout wherever it is listed."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hyrax_mlops.quiet import headless_figures

headless_figures()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyrax_mlops.data.display import png_data_uri, stretch  # noqa: E402


def cutout_grid(cubes: np.ndarray, titles: Sequence[str], suptitle: str = "",
                ncols: int = 5, residuals: np.ndarray | None = None):
    """Figure of (n, bands, h, w) cutouts, asinh-stretched, `titles[i]` over cutout i; with
    `residuals` (n, bands, h, w), each cutout's |residual| summed over bands under it (dark:
    nothing left over; bright: where the model could not reproduce the stamp)."""
    n = len(cubes)
    ncols = max(1, min(ncols, n))
    per = 2 if residuals is not None else 1  # rows of axes per row of objects
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows * per, ncols, figsize=(2.0 * ncols, (2.3 if per == 1 else
                             4.2) * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (cube, title) in enumerate(zip(cubes, titles, strict=False)):
        ax = axes[(i // ncols) * per, i % ncols]
        ax.imshow(stretch(cube), interpolation="nearest")
        ax.set_title(title, fontsize=6)
        if residuals is not None:
            mag = residual_magnitude(residuals[i])
            axes[(i // ncols) * per + 1, i % ncols].imshow(
                mag, cmap="magma", interpolation="nearest",
                vmin=0, vmax=float(np.percentile(mag, 99.5)) or 1.0)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if suptitle else None)
    return fig


def residual_magnitude(residual: np.ndarray) -> np.ndarray:
    """|reconstruction - input| summed over bands, (h, w): where the model could not
    reproduce the stamp."""
    return np.abs(np.asarray(residual, dtype=np.float64)).sum(axis=0)


def residual_png_uri(residual: np.ndarray, size: int = 96) -> str:
    """A (bands, h, w) residual as a PNG data URI, `size` pixels a side: its magnitude in
    the gallery's colours (magma; black: nothing left over, bright: what the model missed)."""
    mag = residual_magnitude(residual)
    top = float(np.percentile(mag, 99.5)) or 1.0
    return png_data_uri(plt.get_cmap("magma")(np.clip(mag / top, 0, 1))[..., :3], size)
