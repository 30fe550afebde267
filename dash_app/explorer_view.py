"""Explorer: one reduce run's maps in 2D/3D, coloured by any catalog column; selections as a
table, thumbnails and CSV; neighbours from the vector store; a reference catalog overlay."""

from __future__ import annotations

import dash_ag_grid as dag
import numpy as np
import pandas as pd
from dash import Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from dash_app import figures, selection, thumbs
from dash_app.data import AppData
from dash_app.reference import match, parse_upload
from dash_app.runs_view import NUMBER

TABLE_ROWS = 1000  # the browser gets at most this many selected rows; export has them all
N_THUMBS = 6
MAX_QUERIES = 50  # "search from these" queries with at most this many selected objects
HOVER = ["flux", "r_half", "ra", "dec", "outlier_score", "outlier_why"]  # when there


def layout(data: AppData) -> html.Div:
    return html.Div([
        html.Div([
            dcc.Dropdown(id="explorer-run", placeholder="reduce run", style={"minWidth": "380px"}),
            dcc.Dropdown(id="explorer-map", placeholder="map", clearable=False,
                         style={"minWidth": "140px"}),
            dcc.Dropdown(id="explorer-color", placeholder="colour by", style={"minWidth": "180px"}),
            dcc.RadioItems(id="explorer-stretch", options=["asinh", "lupton", "zscale"],
                           value="asinh", inline=True),
        ], className="toolbar"),
        html.Div(id="explorer-info", className="message"),
        dcc.Graph(id="explorer-graph", config={"scrollZoom": True, "displaylogo": False},
                  clear_on_unhover=True),
        dcc.Tooltip(id="explorer-tooltip", direction="right", loading_text="",
                    background_color="rgba(255,255,255,0.95)"),
        dcc.Store(id="explorer-state"),
        dcc.Store(id="explorer-neighbour-ids"),
        dcc.Store(id="explorer-selection"),
        dcc.Store(id="explorer-reference"),
        html.Div([
            html.Div([
                html.H4("Selection"),
                html.Div(id="explorer-selection-info", children="Draw a lasso or box on the map."),
                html.Div([
                    html.Button("Resample", id="explorer-resample"),
                    html.Button("Export CSV", id="explorer-export"),
                    dcc.Download(id="explorer-download"),
                    html.Span([dcc.Clipboard(id="explorer-copy", title="copy ids"), " copy ids"]),
                    html.Button("Search from these", id="explorer-search-selection"),
                ], className="toolbar"),
                html.Div(id="explorer-thumbs"),
                dag.AgGrid(id="explorer-table", rowData=[], columnDefs=[],
                           defaultColDef={"sortable": True, "filter": True, "resizable": True},
                           style={"height": "300px"}),
            ], style={"flex": "3"}),
            html.Div([
                html.H4("Neighbours"),
                html.Div([
                    dcc.Input(id="explorer-search-id", placeholder="object_id (or click a point)",
                              debounce=True),
                    dcc.Input(id="explorer-k", type="number", value=8, min=1, max=100,
                              style={"width": "60px"}),
                    html.Button("Search", id="explorer-search-go"),
                ], className="toolbar"),
                html.Div(id="explorer-neighbours"),
                html.H4("Reference catalog"),
                dcc.Upload(id="explorer-reference-upload", children=html.Div(
                    "Drop or pick a CSV with object_id, or ra and dec"), className="upload"),
                html.Span(["match radius (arcsec) ",
                           dcc.Input(id="explorer-radius", type="number", value=1.0, min=0,
                                     style={"width": "70px"})]),
                html.Div(id="explorer-reference-info", className="message"),
            ], style={"flex": "2"}),
        ], style={"display": "flex", "gap": "16px"}),
    ])


def register(app, data: AppData) -> None:
    @app.callback(Output("explorer-run", "options"), Output("explorer-run", "value",
                                                              allow_duplicate=True),
                  Input("tabs", "value"), State("explorer-run", "value"),
                  prevent_initial_call="initial_duplicate")
    def runs(_, current):
        opts = data.reduce_runs()
        values = [o["value"] for o in opts]
        if current in values:
            return opts, no_update  # unchanged: don't redraw everything downstream
        if data.preferred in values:
            return opts, data.preferred
        return opts, values[0] if values else None

    @app.callback(Output("explorer-map", "options"), Output("explorer-map", "value"),
                  Output("explorer-color", "options"), Output("explorer-color", "value"),
                  Input("explorer-run", "value"), State("explorer-color", "value"))
    def run_chosen(run, colour):
        if not run:
            return [], None, [], None
        red = data.reduction(run)
        keys = red.keys
        key = "umap_2d" if "umap_2d" in keys else keys[0]
        cols = red.columns()
        colour = colour if colour in cols else ("flux" if "flux" in cols else None)
        return keys, key, cols, colour

    def render(run, key, colour, overlays, view=None):
        red = data.reduction(run)
        table = red.maps[key]
        marked = overlay_rows(data, red, run, *overlays)
        counts = {k: 0 if v is None else len(v) for k, v in marked.items()}
        hover = [c for c in HOVER if c in red.catalog.columns]
        title = f"{key.replace('_', ' ').upper()}"
        if "z" in table:
            fig, info = figures.map_3d(table, red.catalog, colour, hover_columns=hover,
                                       title=title, **marked)
            return fig, {"run": run, "key": key, "n_traces": len(fig.data), "marked": counts,
                         **info}, info_text(info)
        view = view or figures.View()
        fig, info = figures.map_2d(table, red.catalog, colour, view, hover_columns=hover,
                                   title=title, tooltip=True, **marked)
        return fig, {"run": run, "key": key, "view": view.__dict__, "n_traces": len(fig.data),
                     "marked": counts, **info}, info_text(info)

    @app.callback(Output("explorer-graph", "figure"), Output("explorer-state", "data"),
                  Output("explorer-info", "children"),
                  Input("explorer-map", "value"), Input("explorer-color", "value"),
                  State("explorer-selection", "data"), State("explorer-neighbour-ids", "data"),
                  State("explorer-reference", "data"), State("explorer-run", "value"))
    def draw(key, colour, sel, near, reference, run):
        if not run or not key or key not in data.reduction(run).maps:
            raise PreventUpdate
        if ctx.triggered_id == "explorer-map":
            sel = None  # a new map starts without a drawn selection (see `select`)
        return render(run, key, colour, (sel, near, reference))

    # The overlays (selection, neighbours, reference) are patched into the map's last
    # traces: the map and the user's lasso on it stay as they are.
    @app.callback(Output("explorer-graph", "figure", allow_duplicate=True),
                  Output("explorer-state", "data", allow_duplicate=True),
                  Input("explorer-selection", "data"), Input("explorer-neighbour-ids", "data"),
                  Input("explorer-reference", "data"), State("explorer-run", "value"),
                  State("explorer-map", "value"), State("explorer-state", "data"),
                  prevent_initial_call=True)
    def overlays(sel, near, reference, run, key, state):
        if not state or state.get("run") != run or state.get("key") != key:
            raise PreventUpdate  # a draw is on its way and brings the overlays with it
        red = data.reduction(run)
        marked = overlay_rows(data, red, run, sel, near, reference)
        counts = {k: 0 if v is None else len(v) for k, v in marked.items()}
        if counts == state.get("marked"):
            raise PreventUpdate  # e.g. the empty selection on load: nothing to redraw
        patch = Patch()
        first = state["n_traces"] - len(figures.OVERLAYS)
        for i, (name, rows) in enumerate(zip(figures.OVERLAYS, marked.values(), strict=True)):
            patch["data"][first + i] = figures.overlay_trace(
                red.maps[key], red.ids, rows, name).to_plotly_json()
        return patch, {**state, "marked": counts}

    @app.callback(Output("explorer-tooltip", "show"), Output("explorer-tooltip", "bbox"),
                  Output("explorer-tooltip", "children"),
                  Input("explorer-graph", "hoverData"), State("explorer-run", "value"),
                  State("explorer-stretch", "value"))
    def hover(hover_data, run, stretch):
        point = (hover_data or {}).get("points", [{}])[0]
        oid = point.get("customdata")
        # 3D points may come without a bounding box: the card then sits at the map's corner
        bbox = point.get("bbox") or {"x0": 40, "x1": 40, "y0": 40, "y1": 40}
        if not run or not oid:
            return False, no_update, no_update
        red = data.reduction(run)
        rows = red.rows_of([str(oid)])
        if not len(rows):
            return False, no_update, no_update
        fields = figures.hover_fields(red.catalog, int(rows[0]),
                                      [c for c in HOVER if c in red.catalog.columns])
        return True, bbox, html.Div([
            *thumbs.tiles(red, rows, stretch, id_prefix="hover"),
            *thumbs.residual_tile(red.catalog, int(rows[0]), str(oid)),
            html.B(str(oid)),
            *[html.Div(f"{col}: {value}") for col, value in fields],
        ], className="hover-card")

    # Zooming is its own callback, so a relayout event never races with (and cancels) a draw.
    @app.callback(Output("explorer-graph", "figure", allow_duplicate=True),
                  Output("explorer-state", "data", allow_duplicate=True),
                  Output("explorer-info", "children", allow_duplicate=True),
                  Input("explorer-graph", "relayoutData"),
                  State("explorer-run", "value"), State("explorer-map", "value"),
                  State("explorer-color", "value"), State("explorer-selection", "data"),
                  State("explorer-neighbour-ids", "data"), State("explorer-reference", "data"),
                  State("explorer-state", "data"), prevent_initial_call=True)
    def zoom(relayout, run, key, colour, sel, near, reference, state):
        if not relayout or not any(k.startswith(("xaxis", "yaxis")) for k in relayout):
            raise PreventUpdate
        if not state or state.get("run") != run or state.get("key") != key or "view" not in state:
            raise PreventUpdate
        drawn = figures.View(**state["view"])
        view = figures.View.from_relayout(relayout, drawn)
        if state["mode"] == "points" and drawn.contains(view):
            raise PreventUpdate  # the browser already holds every point of this window
        return render(run, key, colour, (sel, near, reference), view)

    @app.callback(Output("explorer-selection", "data"),
                  Input("explorer-graph", "selectedData"), Input("explorer-map", "value"),
                  State("explorer-run", "value"))
    def select(selected, key, run):
        if ctx.triggered_id == "explorer-map" or not run:
            return None
        geom = selection.geometry(selected)
        return {"run": run, "map": key, "geometry": geom} if geom else None

    @app.callback(Output("explorer-selection-info", "children"),
                  Output("explorer-thumbs", "children"), Output("explorer-table", "rowData"),
                  Output("explorer-table", "columnDefs"),
                  Input("explorer-selection", "data"), Input("explorer-resample", "n_clicks"),
                  Input("explorer-stretch", "value"))
    def show_selection(sel, resample, stretch):
        rows = selection.resolve(data, sel)
        if len(rows) == 0:
            return "Draw a lasso or box on the map.", [], [], []
        red = data.reduction(sel["run"])
        rng = np.random.default_rng(resample or 0)
        pick = np.sort(rng.choice(rows, min(N_THUMBS, len(rows)), replace=False))
        table = selected_table(red, sel["map"], rows[:TABLE_ROWS])
        table = table.loc[:, table.notna().any()]  # no column with nothing in it (export has all)
        cols = [{"field": c, "pinned": "left" if c == "object_id" else None,
                 **({"valueFormatter": NUMBER} if pd.api.types.is_float_dtype(table[c]) else {})}
                for c in table.columns]
        shown = f" (table shows the first {TABLE_ROWS:,}; export has all)" \
            if len(rows) > TABLE_ROWS else ""
        return (f"{figures.plural(len(rows), 'object')} selected{shown}",
                thumbs.tiles(red, pick, stretch),
                table.astype(object).where(table.notna(), None).to_dict("records"), cols)

    @app.callback(Output("explorer-download", "data"), Input("explorer-export", "n_clicks"),
                  State("explorer-selection", "data"), prevent_initial_call=True)
    def export(_, sel):
        rows = selection.resolve(data, sel)
        if len(rows) == 0:
            raise PreventUpdate
        red = data.reduction(sel["run"])
        table = selected_table(red, sel["map"], rows)
        return dcc.send_data_frame(table.to_csv, f"selection-{sel['run'][:8]}-{sel['map']}.csv",
                                   index=False)

    @app.callback(Output("explorer-copy", "content"), Input("explorer-copy", "n_clicks"),
                  State("explorer-selection", "data"), prevent_initial_call=True)
    def copy_ids(_, sel):
        rows = selection.resolve(data, sel)
        if not len(rows):
            raise PreventUpdate
        return "\n".join(data.reduction(sel["run"]).ids[rows])

    @app.callback(Output("explorer-neighbours", "children"),
                  Output("explorer-search-id", "value"),
                  Output("explorer-neighbour-ids", "data"),
                  Input("explorer-graph", "clickData"), Input("explorer-search-go", "n_clicks"),
                  Input("explorer-search-id", "n_submit"),
                  Input("explorer-search-selection", "n_clicks"),
                  State("explorer-search-id", "value"), State("explorer-k", "value"),
                  State("explorer-selection", "data"), State("explorer-run", "value"),
                  State("explorer-stretch", "value"), prevent_initial_call=True)
    def neighbours(click, _go, _submit, _from_sel, typed, k, sel, run, stretch):
        if not run:
            raise PreventUpdate
        red = data.reduction(run)
        from hyrax_mlops.vectors import IndexUnreachable

        try:
            searcher = data.searcher(red)
        except IndexUnreachable as exc:  # its message is redacted: safe to show
            return html.I(str(exc)), no_update, None
        if searcher is None:
            return html.I("No vector index for these embeddings: run `hyrax-mlops index`."), \
                no_update, None
        k = int(k or 8)
        trigger = ctx.triggered_id
        if trigger == "explorer-search-selection":
            rows = selection.resolve(data, sel)
            if not len(rows):
                return html.I("Select objects first."), no_update, None
            picked = rows[np.linspace(0, len(rows) - 1, min(len(rows), MAX_QUERIES)).astype(int)]
            queries = list(red.ids[picked])
            found = aggregate_neighbours(searcher.by_id(queries, k + len(queries)),
                                         set(red.ids[rows]), k)
            title = (f"Objects most like the {figures.plural(len(rows), 'selected object')} "
                     "(not selected)")
            query = no_update
        else:
            oid = typed
            if trigger == "explorer-graph":
                oid = (click or {}).get("points", [{}])[0].get("customdata")
            if not oid:
                raise PreventUpdate
            try:
                found = searcher.by_id([str(oid)], k + 1)[0]
            except Exception as exc:
                return html.I(str(exc)), no_update, None
            title, query = f"Neighbours of {oid}", str(oid)
        rows = red.rows_of(found["object_id"])
        known = set(red.ids[rows])
        captions = [f"{o} d={d:.3g}" for o, d in zip(found["object_id"], found["distance"],
                                                    strict=True) if o in known]
        return [html.Div(title), html.Div(thumbs.tiles(red, rows, stretch, captions,
                                                       id_prefix="neighbour"))], query, \
            {"run": run, "ids": [str(i) for i in red.ids[rows]]}

    @app.callback(Output("explorer-reference", "data"),
                  Output("explorer-reference-info", "children"),
                  Input("explorer-reference-upload", "contents"),
                  Input("explorer-radius", "value"), State("explorer-run", "value"),
                  prevent_initial_call=True)
    def reference(contents, radius, run):
        if not contents or not run:
            raise PreventUpdate
        try:
            ref = parse_upload(contents)
        except Exception as exc:
            return None, f"Could not read the CSV: {exc}"
        rows, message = match(ref, data.reduction(run).catalog, float(radius or 1.0))
        return {"run": run, "rows": rows.tolist()}, message


def overlay_rows(data: AppData, red, run: str, sel: dict | None, near: dict | None,
                 reference: dict | None) -> dict[str, np.ndarray | None]:
    """Catalog rows of `red` to mark as selected, as neighbours and as reference objects."""
    def rows_in(stored: dict | None, rows) -> np.ndarray | None:
        if not stored or stored.get("run") != run:
            return None
        return np.asarray(rows, dtype=np.int64)

    return {
        "highlight": rows_in(sel, selection.resolve(data, sel) if sel else []),
        "neighbours": rows_in(near, red.rows_of(near["ids"]) if near else []),
        "reference": rows_in(reference, reference["rows"] if reference else []),
    }


def info_text(info: dict) -> str:
    if info["mode"] == "density":
        return (f"{figures.plural(info['n_in_view'], 'object')} in view: drawn as a density "
                f"image; zoom in below {figures.MAX_POINTS:,} to see individual points.")
    if info["mode"] == "sample":
        return (f"3D view of {figures.plural(info['n_shown'], 'object')} (stratified sample "
                "when larger).")
    return f"{figures.plural(info['n_in_view'], 'object')} in view."


def selected_table(red, key: str, rows: np.ndarray) -> pd.DataFrame:
    """ids, coordinates in the chosen map, and catalog columns of `rows`."""
    coords = red.maps[key].set_index("row")
    table = red.catalog.iloc[rows].reset_index(drop=True)
    xyz = [c for c in ("x", "y", "z") if c in coords]
    for c in reversed(xyz):
        table.insert(1, f"{key}_{c}", coords[c].reindex(rows).to_numpy())
    return table


def aggregate_neighbours(tables: list[pd.DataFrame], exclude: set[str], k: int) -> pd.DataFrame:
    """The k objects nearest to any query (by their smallest distance), queries excluded."""
    hits = pd.concat(tables)
    hits = hits[~hits["object_id"].isin(exclude)]
    best = hits.groupby("object_id", as_index=False)["distance"].min()
    return best.sort_values("distance").head(k).reset_index(drop=True)
