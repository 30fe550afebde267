"""Runs: filter by experiment, stage, tag and param; a sortable grid of params and final
metrics; overlaid metric curves; parallel coordinates; each run's lineage as links."""

from __future__ import annotations

import dash_ag_grid as dag
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from dash_app.data import AppData
from dash_app.figures import plural
from hyrax_mlops.tracking import TAG_STAGE, consumers, lineage

STAGES = ["pipeline", "download", "ingest", "filter", "train", "tune", "infer", "index",
          "reduce", "analyse", "peel"]
BASE_COLUMNS = ["run_id", "run_name", "stage", "status", "start_time"]
# four significant digits in the grid; the value itself (for sorting, filtering) is untouched
NUMBER = {"function": "params.value == null ? '' : d3.format('.4~g')(params.value)"}


def layout(data: AppData) -> html.Div:
    exps = data.experiments()
    return html.Div([
        html.Div([
            dcc.Dropdown(id="runs-experiments", multi=True, placeholder="experiments",
                         options=[{"label": n, "value": i} for i, n in exps],
                         value=[i for i, _ in exps], style={"minWidth": "260px"}),
            dcc.Dropdown(id="runs-stages", multi=True, placeholder="stages (all)",
                         options=STAGES, style={"minWidth": "240px"}),
            dcc.Input(id="runs-filter", debounce=True, style={"width": "420px"},
                      placeholder="MLflow filter, e.g. params.`train.lr` > '0.001' "
                                  "or tags.`hyrax.stage` = 'train'"),
            html.Button("Refresh", id="runs-refresh"),
        ], className="toolbar"),
        html.Div(id="runs-message", className="message"),
        dag.AgGrid(id="runs-grid", rowData=[], columnDefs=[], getRowId="params.data.run_id",
                   defaultColDef={"sortable": True, "filter": True, "resizable": True},
                   # fields such as "metrics.val_loss" are names, not paths into nested rows
                   dashGridOptions={"rowSelection": {"mode": "multiRow", "checkboxes": True,
                                                     "enableClickSelection": True},
                                    "suppressFieldDotNotation": True,
                                    "suppressColumnVirtualisation": True,
                                    "pagination": True, "paginationPageSize": 20},
                   style={"height": "420px"}),
        html.Div([
            html.Div([dcc.Dropdown(id="runs-metric", placeholder="metric"),
                      dcc.Graph(id="runs-curves")], style={"flex": "1"}),
            html.Div([dcc.Dropdown(id="runs-parcoords-metric", placeholder="colour by metric"),
                      dcc.Graph(id="runs-parcoords")], style={"flex": "1"}),
        ], style={"display": "flex", "gap": "12px"}),
        html.H4("Lineage of the selected run"),
        html.Div(id="runs-lineage", className="lineage"),
    ])


def prompt_figure(text: str, height: int = 380) -> go.Figure:
    """An empty plot that says what to do, instead of bare axes."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=15, color="#666"))
    fig.update_layout(xaxis=dict(visible=False), yaxis=dict(visible=False), height=height,
                      margin=dict(l=40, r=10, t=40, b=30), plot_bgcolor="white")
    return fig


def _empty(series: pd.Series) -> bool:
    """No run has a value here (NaN, None or blank text)."""
    return all(v is None or (isinstance(v, float) and np.isnan(v)) or
               (isinstance(v, str) and v.strip() in ("", "None", "nan")) for v in series)


def runs_table(df: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Grid rows and columns: identity, then final metrics, then params; columns no run has
    a value in are left out."""
    if df.empty:
        return [], []
    out = pd.DataFrame({
        "run_id": df["run_id"],
        "run_name": df.get("tags.mlflow.runName", ""),
        "stage": df.get(f"tags.{TAG_STAGE}", ""),
        "status": df["status"],
        "start_time": df["start_time"].dt.strftime("%Y-%m-%d %H:%M:%S"),
    })
    params = sorted(c for c in df.columns if c.startswith("params.") and not _empty(df[c]))
    metrics = sorted(c for c in df.columns if c.startswith("metrics.") and not _empty(df[c]))
    for col in metrics + params:
        out[col] = df[col]
    out = out.astype(object).where(out.notna(), None)
    cols = [{"field": c, "pinned": "left" if c == "run_id" else None,
             **({"width": 120} if c in ("run_id", "run_name") else {}),
             **({"width": 100} if c in ("stage", "status") else {})} for c in BASE_COLUMNS]
    cols += [{"field": c, "headerName": c[len("metrics."):], "headerTooltip": c,
              "filter": "agNumberColumnFilter", "valueFormatter": NUMBER, "width": 130}
             for c in metrics]
    cols += [{"field": c, "headerName": c[len("params."):], "headerTooltip": c}
             for c in params]
    return out.to_dict("records"), cols


def _numeric(series: pd.Series) -> pd.Series | None:
    vals = pd.to_numeric(series, errors="coerce")
    return vals if vals.notna().sum() >= 2 and vals.nunique() > 1 else None


def register(app, data: AppData) -> None:
    @app.callback(Output("runs-grid", "rowData"), Output("runs-grid", "columnDefs"),
                  Output("runs-message", "children"), Output("runs-metric", "options"),
                  Output("runs-parcoords-metric", "options"),
                  Input("runs-experiments", "value"), Input("runs-stages", "value"),
                  Input("runs-filter", "value"), Input("runs-refresh", "n_clicks"))
    def load_runs(exps, stages, text, _):
        clauses = [text] if text else []
        if stages:
            names = ", ".join(f"'{s}'" for s in stages)
            clauses.append(f"tags.`{TAG_STAGE}` IN ({names})")
        try:
            df = data.runs(exps or [], " AND ".join(clauses))
        except Exception as exc:  # a malformed filter is the user's to fix: say so
            return [], [], f"Filter error: {exc}", [], []
        rows, cols = runs_table(df)
        metrics = [c["field"][len("metrics."):] for c in cols
                   if c["field"].startswith("metrics.")]
        return rows, cols, plural(len(rows), "run"), sorted(metrics), sorted(metrics)

    @app.callback(Output("runs-curves", "figure"), Input("runs-grid", "selectedRows"),
                  Input("runs-metric", "value"))
    def curves(selected, metric):
        from mlflow.tracking import MlflowClient

        if not selected:
            return prompt_figure("Select runs in the grid to compare their curves")
        if not metric:
            return prompt_figure("Pick a metric to plot for the selected runs")
        fig = go.Figure()
        client = MlflowClient()
        for row in selected[:12]:
            hist = client.get_metric_history(row["run_id"], metric)
            if hist:
                fig.add_trace(go.Scatter(x=[m.step for m in hist], y=[m.value for m in hist],
                                         mode="lines+markers",
                                         name=f"{row['run_name']} {row['run_id'][:6]}"))
        if not fig.data:
            return prompt_figure(f"No {metric} history in the selected runs")
        fig.update_layout(title=f"{metric} per step, selected runs",
                          xaxis_title="step", height=380, margin=dict(l=40, r=10, t=40, b=30))
        return fig

    @app.callback(Output("runs-parcoords", "figure"), Input("runs-grid", "rowData"),
                  Input("runs-parcoords-metric", "value"))
    def parcoords(rows, metric):
        if not rows or not metric:
            return prompt_figure("Pick a metric to see the params of every run against it")
        fig = go.Figure()
        if rows and metric:
            df = pd.DataFrame(rows)
            target = _numeric(df.get(f"metrics.{metric}", pd.Series(dtype=float)))
            dims = []
            cols = sorted(c for c in df.columns if c.startswith("params."))
            for col in cols:
                if col.startswith("params.model.") and \
                        col.replace("params.model.", "params.model_resolved.") in cols:
                    continue  # the resolved value covers runs that left it at its default
                vals = _numeric(df[col])
                if vals is not None and target is not None:
                    dims.append(dict(label=col.rsplit(".", 1)[-1], values=vals.to_numpy()))
            if target is not None:
                keep = target.notna().to_numpy()
                dims = [dict(d, values=np.asarray(d["values"])[keep]) for d in dims[:12]]
                dims.append(dict(label=metric, values=target.to_numpy()[keep]))
                fig.add_trace(go.Parcoords(dimensions=dims, labelangle=-20, line=dict(
                    color=target.to_numpy()[keep], colorscale="Viridis", showscale=True)))
        if not fig.data:
            return prompt_figure(f"{metric} differs between fewer than two of these runs: "
                                 "nothing to compare")
        fig.update_layout(title=f"params against {metric or 'a metric'}", height=380,
                          margin=dict(l=60, r=40, t=90, b=30))
        return fig

    @app.callback(Output("runs-lineage", "children"), Input("runs-grid", "selectedRows"),
                  State("runs-experiments", "value"))
    def show_lineage(selected, exps):
        if not selected:
            return html.I("Select a run to see what it was made from and what used it.")
        rid = selected[-1]["run_id"]
        items = []
        for node in lineage(rid):
            label = f"{node.label}: " if node.label else ""
            text = f"{label}{node.stage} {node.run_id[:8]} {node.status}"
            items.append(html.Li(html.Button(text, id={"type": "lineage-link",
                                                       "run": node.run_id},
                                             className="link"),
                                 style={"marginLeft": f"{node.depth * 18}px"}))
        used = [html.Li(html.Button(f"as {name}: {stage} {r[:8]}", className="link",
                                    id={"type": "lineage-link", "run": r}))
                for name, stage, r in consumers(rid, exps or [])]
        return [html.Div("Made from:"), html.Ul(items),
                html.Div("Used by:"), html.Ul(used or [html.Li(html.I("no runs yet"))])]

    @app.callback(Output("runs-grid", "selectedRows"), Output("explorer-run", "value"),
                  Output("tabs", "value"),
                  Input({"type": "lineage-link", "run": ALL}, "n_clicks"),
                  prevent_initial_call=True)
    def follow_link(clicks):
        if not ctx.triggered_id or not any(clicks):
            raise PreventUpdate
        rid = ctx.triggered_id["run"]
        import mlflow

        stage = mlflow.get_run(rid).data.tags.get(TAG_STAGE)
        if stage == "reduce":
            return {"ids": [rid]}, rid, "explorer"
        return {"ids": [rid]}, no_update, no_update
