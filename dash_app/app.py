"""Builds the Dash app: three tabs over one `AppData`."""

from __future__ import annotations

from dash import Dash, dcc, html

from dash_app import compare_view, explorer_view, runs_view
from dash_app.data import AppData
from hyrax_mlops.config import Config


def create_app(cfg: Config | None = None, data: AppData | None = None) -> Dash:
    data = data or AppData(cfg)
    app = Dash(__name__, title="hyrax-mlops", suppress_callback_exceptions=True,
               update_title=None)
    app.layout = html.Div([
        html.H2("hyrax-mlops"),
        dcc.Tabs(id="tabs", value="runs", children=[
            dcc.Tab(label="Runs", value="runs", children=runs_view.layout(data)),
            dcc.Tab(label="Explorer", value="explorer", children=explorer_view.layout(data)),
            dcc.Tab(label="Compare", value="compare", children=compare_view.layout(data)),
        ]),
    ], className="page")
    runs_view.register(app, data)
    explorer_view.register(app, data)
    compare_view.register(app, data)
    app.hyrax_data = data
    return app
