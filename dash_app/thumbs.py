"""Thumbnails of objects as small PNG data URIs, in the display stretch the user picked."""

from __future__ import annotations

import numpy as np
from dash import html

from hyrax_mlops.analysis.outliers import RESIDUAL_MAP
from hyrax_mlops.data.display import STRETCHES, png_data_uri

THUMB_PX = 96


def png_uri(rgb: np.ndarray) -> str:
    return png_data_uri(rgb, THUMB_PX)


def tiles(reduction, rows: np.ndarray, stretch: str = "asinh",
          captions: list[str] | None = None, id_prefix: str = "thumb") -> list:
    """One tile per row: the cutout (through the dataset's modality) and a caption."""
    if reduction.images is None or len(rows) == 0:
        return []
    cubes = reduction.images(np.asarray(rows))
    show = STRETCHES.get(stretch, STRETCHES["asinh"])
    out = []
    for i, (row, cube) in enumerate(zip(rows, cubes, strict=True)):
        oid = str(reduction.ids[row])
        caption = captions[i] if captions else oid
        out.append(html.Figure(
            [html.Img(src=png_uri(show(cube)), alt=oid, title=oid,
                      style={"width": f"{THUMB_PX}px", "height": f"{THUMB_PX}px"}),
             html.Figcaption(caption, style={"fontSize": "11px"})],
            className=f"{id_prefix}-tile", **{"data-object-id": oid},
            style={"display": "inline-block", "margin": "4px", "textAlign": "center"}))
    return out


def residual_tile(catalog, row: int, oid: str) -> list:
    """The object's residual map (a flagged outlier's, from its analyse run) as a tile, or
    nothing: where in the stamp the model could not reproduce it."""
    uri = catalog[RESIDUAL_MAP].iloc[row] if RESIDUAL_MAP in catalog.columns else None
    if not isinstance(uri, str) or not uri.startswith("data:image/png"):
        return []
    return [html.Figure(
        [html.Img(src=uri, alt=f"residual of {oid}", title="where the model missed (|residual|)",
                  style={"width": f"{THUMB_PX}px", "height": f"{THUMB_PX}px"}),
         html.Figcaption("residual", style={"fontSize": "11px"})],
        className="hover-residual-tile",
        style={"display": "inline-block", "margin": "4px", "textAlign": "center"})]
