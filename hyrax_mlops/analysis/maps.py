"""Pictures of a reduction: a PNG per map, and one interactive Plotly HTML holding all maps."""

from __future__ import annotations

from collections.abc import Sequence

from hyrax_mlops.quiet import headless_figures

headless_figures()
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COORDS = ("x", "y", "z")


def colour_scale(values: pd.Series) -> tuple[np.ndarray, str]:
    """Values to colour by and their label: log10 for heavy-tailed positives, codes for text."""
    if pd.api.types.is_numeric_dtype(values):
        v = values.astype(float).to_numpy()
        pos = v[v > 0]
        if len(pos) > 0.9 * np.isfinite(v).sum() and np.nanmax(v) > 10 * np.median(pos):
            # heavy-tailed positives (fluxes, sizes): a log scale shows their structure
            return np.log10(np.clip(v, pos.min(), None)), f"log10({values.name})"
        return v, str(values.name)
    codes, _ = pd.factorize(values.astype(str))
    return codes, str(values.name)


def map_png(table: pd.DataFrame, title: str, color_by: str | None):
    """Scatter of a 2D or 3D map; `table` has x, y[, z] and optionally `color_by`."""
    three_d = "z" in table
    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="3d" if three_d else None)
    c, label = (colour_scale(table[color_by]) if color_by in table else (None, ""))
    colour = {"c": c, "cmap": "viridis"} if c is not None else {"color": "tab:blue"}
    pts = ax.scatter(*(table[k] for k in COORDS if k in table), s=6, linewidths=0, **colour)
    if c is not None:
        fig.colorbar(pts, ax=ax, label=label, shrink=0.8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def maps_html(tables: dict[str, pd.DataFrame], color_by: str | None,
              hover: Sequence[str]) -> str:
    """One self-contained HTML page (works offline) with an interactive figure per map."""
    import plotly.express as px

    parts = []
    for i, (title, table) in enumerate(tables.items()):
        colour = color_by if color_by in table else None
        if colour and pd.api.types.is_numeric_dtype(table[colour]):
            values, colour = colour_scale(table[colour])  # same scale as the PNG
            table = table.assign(**{colour: values})
        kwargs = dict(color=colour, hover_name="object_id",
                      hover_data=[h for h in hover if h in table], title=title)
        if "z" in table:
            fig = px.scatter_3d(table, x="x", y="y", z="z", **kwargs)
            fig.update_traces(marker_size=2)
        else:
            fig = px.scatter(table, x="x", y="y", render_mode="webgl", **kwargs)
            fig.update_traces(marker_size=4)
        fig.update_layout(height=600)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    body = "\n".join(parts)
    return f"<html><head><meta charset='utf-8'><title>hyrax reductions</title></head>" \
           f"<body>{body}</body></html>"
