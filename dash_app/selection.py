"""A selection is the geometry the user drew (or ids they clicked), resolved to catalog rows
on the server: the browser never holds more than the geometry."""

from __future__ import annotations

import functools
import json

import numpy as np

from dash_app.data import AppData
from dash_app.figures import select_rows


def geometry(selected: dict | None) -> dict | None:
    """What to keep of Plotly's selectedData: a box, a lasso, or clicked ids."""
    if not selected:
        return None
    if selected.get("range"):
        return {"range": {"x": selected["range"]["x"], "y": selected["range"]["y"]}}
    if selected.get("lassoPoints"):
        return {"lassoPoints": {"x": selected["lassoPoints"]["x"],
                                "y": selected["lassoPoints"]["y"]}}
    ids = [p.get("customdata") for p in selected.get("points", []) if p.get("customdata")]
    return {"ids": ids} if ids else None


def resolve(data: AppData, sel: dict | None) -> np.ndarray:
    """Catalog rows of a stored selection {"run", "map", "geometry"}."""
    if not sel or not sel.get("geometry"):
        return np.array([], dtype=np.int64)
    return _cached(data, sel["run"], sel["map"], json.dumps(sel["geometry"], sort_keys=True))


@functools.lru_cache(maxsize=32)
def _cached(data: AppData, run: str, key: str, geom: str) -> np.ndarray:
    red = data.reduction(run)
    g = json.loads(geom)
    if "ids" in g:
        return red.rows_of(g["ids"])
    return np.sort(select_rows(red.maps[key], g))
