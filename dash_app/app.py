"""Builds the Dash app: three tabs over one `AppData`."""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html

from dash_app import compare_view, explorer_view, runs_view
from dash_app.data import AppData
from hyrax_mlops.config import Config


def url_prefix(prefix: str | None) -> str | None:
    """A path prefix as Dash wants it: "/hyrax/" from "hyrax", "/hyrax" or "/hyrax/"."""
    if not prefix or prefix.strip("/") == "":
        return None
    return "/" + prefix.strip("/") + "/"


def create_app(cfg: Config | None = None, data: AppData | None = None, *, tab: str = "runs",
               prefix: str | None = None, proxied: str | None = None) -> Dash:
    """The app over `data` (or the tracking store `cfg` names), opening on `tab`. `prefix`:
    every page and request under it (a reverse proxy passing /hyrax/... through as is);
    `proxied`: the path the browser reaches it by, through a proxy that strips it (Jupyter's
    /proxy/PORT/); routes stay at /."""
    data = data or AppData(cfg)
    where = ({"url_base_pathname": url_prefix(prefix)} if url_prefix(prefix) else
             {"requests_pathname_prefix": url_prefix(proxied), "routes_pathname_prefix": "/"}
             if url_prefix(proxied) else {})
    app = Dash(__name__, title="hyrax-mlops", suppress_callback_exceptions=True,
               update_title=None, **where)
    if url_prefix(prefix):  # the bare address points at the app rather than a blank 404
        from flask import redirect

        app.server.add_url_rule("/", "to_prefix", lambda: redirect(url_prefix(prefix)))
    views = {"runs": ("Runs", runs_view), "explorer": ("Explorer", explorer_view),
             "compare": ("Compare", compare_view)}
    # Every view stays mounted (tabs only show and hide them), so plots keep their state
    # and a figure never arrives at a graph that is being torn down.
    app.layout = html.Div([
        html.H2("hyrax-mlops"),
        dcc.Tabs(id="tabs", value=tab,
                 children=[dcc.Tab(label=label, value=key) for key, (label, _) in views.items()]),
        *[html.Div(view.layout(data), id=f"view-{key}") for key, (_, view) in views.items()],
    ], className="page")

    @app.callback([Output(f"view-{key}", "style") for key in views], Input("tabs", "value"))
    def show(tab):
        return [{"display": "block" if key == tab else "none"} for key in views]

    runs_view.register(app, data)
    explorer_view.register(app, data)
    compare_view.register(app, data)
    app.hyrax_data = data
    return app
