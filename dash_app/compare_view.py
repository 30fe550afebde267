"""Compare: two or three reductions side by side, the explorer's selection and the reference
objects highlighted in each, to judge which latent space organises them best."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, dcc, html
from dash.exceptions import PreventUpdate

from dash_app import figures, selection
from dash_app.data import AppData
from dash_app.figures import plural

MAX_RUNS = 3


def layout(data: AppData) -> html.Div:
    return html.Div([
        html.Div([
            dcc.Dropdown(id="compare-runs", multi=True, placeholder="two or three reduce runs",
                         style={"minWidth": "520px"}),
            dcc.Dropdown(id="compare-map", value="umap_2d", clearable=False,
                         options=["umap_2d", "pca_2d"], style={"minWidth": "140px"}),
        ], className="toolbar"),
        html.Div(id="compare-info", className="message"),
        html.Div(id="compare-graphs", style={"display": "flex", "gap": "8px"}),
    ])


def register(app, data: AppData) -> None:
    @app.callback(Output("compare-runs", "options"), Output("compare-runs", "value"),
                  Output("compare-map", "options"),
                  Input("tabs", "value"), Input("compare-runs", "value"))
    def options(_, chosen):
        opts = data.reduce_runs()
        chosen = list(dict.fromkeys(chosen or data.distinct_reductions(opts, 2)))[:MAX_RUNS]
        # the 2D maps the chosen runs hold (t-SNE's too, when a run made one)
        keys = sorted({k for run in chosen for k in data.reduction(run).maps
                       if k.endswith("_2d")}) or ["umap_2d", "pca_2d"]
        return opts, chosen, keys

    @app.callback(Output("compare-graphs", "children"), Output("compare-info", "children"),
                  Input("tabs", "value"), Input("compare-runs", "value"),
                  Input("compare-map", "value"), Input("explorer-selection", "data"),
                  Input("explorer-reference", "data"))
    def draw(tab, runs, key, sel, reference):
        if tab != "compare":
            raise PreventUpdate  # drawn when looked at, not on every selection elsewhere
        if not runs:
            return [], "Pick reduce runs to compare."
        sel_rows = selection.resolve(data, sel)
        sel_ids = data.reduction(sel["run"]).ids[sel_rows] if len(sel_rows) else []
        ref_ids = (data.reduction(reference["run"]).ids[np.asarray(reference["rows"], int)]
                   if reference and reference.get("rows") else [])
        # one run: its 2D maps side by side (the chosen one first), never one map alone
        panels = ([(run, key) for run in runs[:MAX_RUNS]] if len(runs) > 1 else
                  [(runs[0], k) for k in maps_2d(data.reduction(runs[0]).maps, key)])
        graphs = []
        for run, map_key in panels:
            red = data.reduction(run)
            if map_key not in red.maps:
                graphs.append(html.Div(f"{run[:8]} has no {map_key} map"))
                continue
            fig, _ = figures.map_2d(
                red.maps[map_key], red.catalog, None, figures.View(),
                highlight=red.rows_of(sel_ids), reference=red.rows_of(ref_ids),
                title=f"{map_key} of {run[:8]}", max_points=figures.MAX_POINTS)
            fig.update_layout(height=460, dragmode="pan", showlegend=False)
            graphs.append(dcc.Graph(figure=fig, style={"flex": "1"},
                                    id={"type": "compare-graph", "run": run, "map": map_key}))
        info = (f"{plural(len(sel_ids), 'selected object')} (red rings) and "
                f"{plural(len(ref_ids), 'reference object')} (stars) highlighted in each map.")
        if len(runs) == 1:
            info += (" One reduce run is chosen, so its 2D maps are shown side by side: pick a "
                     "second run to compare latent spaces.")
        return graphs, info


def maps_2d(maps: dict, first: str) -> list[str]:
    """The 2D map names of one reduction, `first` first, at most MAX_RUNS of them."""
    names = [first] if first in maps else []
    names += sorted(k for k in maps if k.endswith("_2d") and k != first)
    return names[:MAX_RUNS]
