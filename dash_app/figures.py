"""Map figures: raw WebGL points when few enough are in view, else a server-side density
image (datashader) that is re-aggregated for each zoom window; 3D as a stratified sample."""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MAX_POINTS = 100_000  # raw points drawn with WebGL up to this many in view
MAX_3D = 20_000  # 3D draws a stratified sample of this size at most
DENSITY_PX = (640, 480)
HIGHLIGHT = dict(color="rgba(0,0,0,0)", size=11, line=dict(color="#ff2d55", width=2))
NEIGHBOURS = dict(color="rgba(0,0,0,0)", size=14, line=dict(color="#00a2ff", width=2.5))
REFERENCE = dict(symbol="star", color="#ffb000", size=12, line=dict(color="black", width=1))
# every map ends with these overlay traces, in this order (empty until there is something to
# show), so a callback can replace one of them without redrawing the map
OVERLAYS = {"selection": HIGHLIGHT, "neighbours": NEIGHBOURS, "reference": REFERENCE}
# datashader's numba kernels are not safe to run from two request threads at once
_DATASHADER = threading.Lock()


@dataclass
class View:
    """A window on a 2D map; None bounds mean the full extent."""

    x0: float | None = None
    x1: float | None = None
    y0: float | None = None
    y1: float | None = None

    @classmethod
    def from_relayout(cls, relayout: dict | None, current: View | None = None) -> View:
        view = current or cls()
        if not relayout:
            return view
        if relayout.get("xaxis.autorange") or relayout.get("autosize"):
            return cls()
        get = relayout.get
        if "xaxis.range[0]" in relayout or "xaxis.range" in relayout:
            xr = get("xaxis.range") or [get("xaxis.range[0]"), get("xaxis.range[1]")]
            view = View(xr[0], xr[1], view.y0, view.y1)
        if "yaxis.range[0]" in relayout or "yaxis.range" in relayout:
            yr = get("yaxis.range") or [get("yaxis.range[0]"), get("yaxis.range[1]")]
            view = View(view.x0, view.x1, yr[0], yr[1])
        return view

    def contains(self, other: View) -> bool:
        """Whether `other` lies inside this window (a full-extent window contains all)."""
        def inside(a0, a1, b0, b1) -> bool:
            if a0 is None:
                return True
            if b0 is None:
                return False
            return min(a0, a1) <= min(b0, b1) and max(b0, b1) <= max(a0, a1)

        return inside(self.x0, self.x1, other.x0, other.x1) and \
            inside(self.y0, self.y1, other.y0, other.y1)

    def mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = np.ones(len(x), dtype=bool)
        if self.x0 is not None:
            m &= (x >= min(self.x0, self.x1)) & (x <= max(self.x0, self.x1))
        if self.y0 is not None:
            m &= (y >= min(self.y0, self.y1)) & (y <= max(self.y0, self.y1))
        return m


def colour_values(values: pd.Series | None) -> tuple[np.ndarray | None, bool, str]:
    """(values to colour by, is_categorical, label); heavy tails get a log scale."""
    if values is None:
        return None, False, ""
    if pd.api.types.is_numeric_dtype(values):
        from hyrax_mlops.analysis.maps import colour_scale

        scaled, label = colour_scale(values)
        return np.asarray(scaled, dtype=float), False, label
    return values.astype(str).to_numpy(), True, str(values.name)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 object', '2 objects', '1,000 objects'."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT \
        or (isinstance(v, str) and not v.strip())


def hover_fields(catalog: pd.DataFrame, row: int, columns: list[str]) -> list[tuple[str, str]]:
    """(column, shown value) of one catalog row; blank and NaN values are left out."""
    out = []
    for col in columns:
        v = catalog[col].iloc[row]
        if not _blank(v):
            out.append((col, f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)))
    return out


def _hover(ids: np.ndarray, catalog: pd.DataFrame, rows: np.ndarray, columns: list[str]):
    text = [f"<b>{i}</b>" for i in ids]
    for col in columns:
        vals = catalog[col].to_numpy()[rows]
        text = [t if _blank(v) else f"{t}<br>{col}: {v:.4g}"
                if isinstance(v, (float, np.floating)) else f"{t}<br>{col}: {v}"
                for t, v in zip(text, vals, strict=True)]
    return text


def map_2d(table: pd.DataFrame, catalog: pd.DataFrame, color: str | None, view: View,
           *, highlight: np.ndarray | None = None, reference: np.ndarray | None = None,
           neighbours: np.ndarray | None = None, hover_columns: list[str] = (),
           title: str = "", max_points: int | None = None, tooltip: bool = False
           ) -> tuple[go.Figure, dict]:
    """The 2D map in `view`: points or a density image, plus highlighted/reference rows.
    With `tooltip` the points carry no hover label of their own: the page shows one (with
    the object's cutout) from the hover event."""
    max_points = MAX_POINTS if max_points is None else max_points
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    rows = table["row"].to_numpy()
    inside = view.mask(x, y)
    n_in = int(inside.sum())
    fig = go.Figure()
    values, categorical, label = colour_values(catalog[color] if color else None)
    ids = catalog["object_id"].to_numpy()
    if n_in <= max_points:
        mode = "points"
        sel = np.flatnonzero(inside)
        r = rows[sel]
        hover = _hover(ids[r], catalog, r, list(hover_columns))
        if categorical:
            for cat in pd.unique(values[r]):
                k = sel[values[r] == cat]
                fig.add_trace(go.Scattergl(
                    x=x[k], y=y[k], mode="markers", name=str(cat), customdata=ids[rows[k]],
                    hovertext=[hover[i] for i in np.searchsorted(sel, k)],
                    hoverinfo="none" if tooltip else "text", marker=dict(size=5)))
        else:
            marker = dict(size=5, color=values[r] if values is not None else "#1f77b4",
                          colorscale="Viridis", showscale=values is not None,
                          colorbar=dict(title=label) if values is not None else None)
            fig.add_trace(go.Scattergl(x=x[sel], y=y[sel], mode="markers", customdata=ids[r],
                                       hovertext=hover, hoverinfo="none" if tooltip else "text",
                                       marker=marker, name="objects", showlegend=False))
    else:
        mode = "density"
        _density(fig, x[inside], y[inside], view, x, y,
                 values[rows[inside]] if values is not None and not categorical else None)
    _overlays(fig, table, ids, highlight, neighbours, reference)
    shown = f"{plural(n_in, 'object')} in view" + (" (density)" if mode == "density" else "")
    fig.update_layout(title=f"{title} — {shown}" if title else shown, dragmode="lasso",
                      margin=dict(l=40, r=10, t=40, b=30), uirevision="map", height=520,
                      legend=dict(itemsizing="constant"), clickmode="event+select")
    return fig, {"mode": mode, "n_in_view": n_in}


def _density(fig: go.Figure, x: np.ndarray, y: np.ndarray, view: View, all_x: np.ndarray,
             all_y: np.ndarray, values: np.ndarray | None) -> None:
    import datashader as ds
    import datashader.transfer_functions as tf

    x0 = view.x0 if view.x0 is not None else float(all_x.min())
    x1 = view.x1 if view.x1 is not None else float(all_x.max())
    y0 = view.y0 if view.y0 is not None else float(all_y.min())
    y1 = view.y1 if view.y1 is not None else float(all_y.max())
    x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    w, h = DENSITY_PX
    canvas = ds.Canvas(plot_width=w, plot_height=h, x_range=(x0, x1), y_range=(y0, y1))
    frame = pd.DataFrame({"x": x, "y": y})
    with _DATASHADER:
        if values is not None:
            frame["v"] = values
            agg = canvas.points(frame, "x", "y", agg=ds.mean("v"))
            img = tf.shade(agg, cmap=["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"],
                           how="linear")
        else:
            agg = canvas.points(frame, "x", "y", agg=ds.count())
            img = tf.shade(agg, cmap=["#c6dbef", "#08306b"], how="eq_hist")
    buf = io.BytesIO()
    img.to_pil().save(buf, format="PNG")
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    fig.add_layout_image(dict(source=src, xref="x", yref="y", x=x0, y=y1, sizex=x1 - x0,
                              sizey=y1 - y0, sizing="stretch", layer="below"))
    # an invisible, selectable sample keeps box/lasso selection and the axis extent working
    k = np.linspace(0, len(x) - 1, min(len(x), 2000)).astype(int) if len(x) else []
    fig.add_trace(go.Scattergl(x=x[k], y=y[k], mode="markers", hoverinfo="skip",
                               marker=dict(size=2, opacity=0), showlegend=False, name="density"))
    fig.update_xaxes(range=[x0, x1])
    fig.update_yaxes(range=[y0, y1])


def overlay_trace(table: pd.DataFrame, ids: np.ndarray, which: np.ndarray | None, name: str,
                  marker: dict | None = None):
    """Markers over the map at catalog rows `which` (an empty trace when there are none)."""
    marker = dict(marker or OVERLAYS[name])
    rows = table["row"].to_numpy()
    pos = np.flatnonzero(np.isin(rows, which))[:5000] if which is not None and len(which) \
        else np.array([], dtype=np.int64)
    three_d = "z" in table
    coords = {c: table[c].to_numpy()[pos] for c in ("x", "y", "z") if c in table}
    if three_d:  # 3D markers are bigger, have fewer symbols and no see-through rings
        line = marker.get("line", {})
        solid = line.get("color") if "rgba(0,0,0,0)" in str(marker.get("color")) else None
        marker = {**marker, "size": marker["size"] / 2 + 1, "color": solid or marker["color"],
                  "opacity": 0.9}
        if marker.get("symbol") not in (None, "circle", "diamond", "square", "cross", "x"):
            marker["symbol"] = "diamond"
        return go.Scatter3d(**coords, mode="markers", name=name, marker=marker,
                            hoverinfo="text", hovertext=ids[rows[pos]],
                            customdata=ids[rows[pos]], showlegend=len(pos) > 0)
    # the page's own hover label (with the cutout) serves these too; a lasso elsewhere
    # must not grey them out
    return go.Scattergl(**coords, mode="markers", name=name, marker=marker, hoverinfo="none",
                        customdata=ids[rows[pos]], showlegend=len(pos) > 0,
                        unselected=dict(marker=dict(opacity=1)))


def _overlays(fig: go.Figure, table: pd.DataFrame, ids: np.ndarray,
              selection: np.ndarray | None, neighbours: np.ndarray | None,
              reference: np.ndarray | None) -> None:
    for name, which in zip(OVERLAYS, (selection, neighbours, reference), strict=True):
        fig.add_trace(overlay_trace(table, ids, which, name))


def stratified_sample(rows: np.ndarray, values: np.ndarray | None, size: int,
                      seed: int = 0) -> np.ndarray:
    """Positions 0..len(rows)-1 sampled evenly across strata of `values` (categories, or
    deciles of a numeric column); every stratum keeps its share, small ones are kept whole."""
    n = len(rows)
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if values is None:
        return np.sort(rng.choice(n, size, replace=False))
    if values.dtype.kind in "fiu":
        finite = np.isfinite(values)
        edges = np.nanquantile(values[finite], np.linspace(0, 1, 11)) if finite.any() else [0]
        strata = np.where(finite, np.searchsorted(edges[1:-1], values), -1)
    else:
        _, strata = np.unique(values, return_inverse=True)
    picks = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        take = max(1, round(size * len(members) / n))
        picks.append(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.concatenate(picks))[: size + len(picks)]


def map_3d(table: pd.DataFrame, catalog: pd.DataFrame, color: str | None, *,
           highlight: np.ndarray | None = None, reference: np.ndarray | None = None,
           neighbours: np.ndarray | None = None, hover_columns: list[str] = (),
           title: str = "", max_points: int | None = None) -> tuple[go.Figure, dict]:
    max_points = MAX_3D if max_points is None else max_points
    values, categorical, label = colour_values(catalog[color] if color else None)
    rows = table["row"].to_numpy()
    pos = stratified_sample(rows, values[rows] if values is not None else None, max_points)
    r = rows[pos]
    ids = catalog["object_id"].to_numpy()
    hover = _hover(ids[r], catalog, r, list(hover_columns))
    fig = go.Figure()
    xyz = {c: table[c].to_numpy()[pos] for c in ("x", "y", "z")}
    if categorical:
        for cat in pd.unique(values[r]):
            k = values[r] == cat
            fig.add_trace(go.Scatter3d(**{c: v[k] for c, v in xyz.items()}, mode="markers",
                                       name=str(cat), customdata=ids[r][k], hoverinfo="text",
                                       hovertext=list(np.array(hover)[k]), marker=dict(size=2)))
    else:
        fig.add_trace(go.Scatter3d(**xyz, mode="markers", customdata=ids[r], hoverinfo="text",
                                   hovertext=hover, showlegend=False, name="objects",
                                   marker=dict(size=2, color=values[r] if values is not None
                                               else "#1f77b4", colorscale="Viridis",
                                               showscale=values is not None,
                                               colorbar=dict(title=label))))
    _overlays(fig, table, ids, highlight, neighbours, reference)
    n = len(table)
    shown = (f"3D: {len(pos):,} of {plural(n, 'object')} shown (stratified sample"
             f"{' by ' + color if color else ''})" if len(pos) < n
             else f"3D: {plural(n, 'object')}")
    fig.update_layout(title=f"{title} — {shown}" if title else shown, height=520,
                      margin=dict(l=0, r=0, t=40, b=0), uirevision="map3d")
    return fig, {"mode": "sample", "n_shown": len(pos)}


def select_rows(table: pd.DataFrame, selected: dict | None) -> np.ndarray:
    """Catalog rows inside a box or lasso drawn on the 2D map (works in both modes)."""
    if not selected:
        return np.array([], dtype=np.int64)
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    if selected.get("range"):
        (xa, xb), (ya, yb) = selected["range"]["x"], selected["range"]["y"]
        m = (x >= min(xa, xb)) & (x <= max(xa, xb)) & (y >= min(ya, yb)) & (y <= max(ya, yb))
    elif selected.get("lassoPoints"):
        from matplotlib.path import Path

        poly = np.column_stack([selected["lassoPoints"]["x"], selected["lassoPoints"]["y"]])
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        m = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1])
        cand = np.flatnonzero(m)
        m = np.zeros(len(x), dtype=bool)
        m[cand] = Path(poly).contains_points(np.column_stack([x[cand], y[cand]]))
    else:
        return np.array([], dtype=np.int64)
    return table["row"].to_numpy()[m]
