"""The app inside a notebook cell: `hm.explore(run)` serves the explorer (map, linked table,
thumbnails, neighbours) and compare from the kernel, with Dash's Jupyter mode, and shows it
inline. What is selected on the map comes back to Python as a DataFrame.

On a laptop the cell's frame loads the app from 127.0.0.1. Where JupyterLab runs behind a
hub (the Rubin Science Platform, Roman Research Nexus, any JupyterHub) the browser cannot
reach the kernel's port: the app is reached through jupyter-server-proxy, at
`$JUPYTERHUB_SERVICE_PREFIX/proxy/PORT/`, by a relative address the notebook page resolves.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pandas as pd
from dash import Input

from dash_app import selection
from dash_app.app import create_app
from dash_app.data import AppData
from hyrax_mlops.config import Config
from hyrax_mlops.errors import HyraxError, LineageError
from hyrax_mlops.tracking import TAG_INPUT, TAG_STAGE, TAG_STAGE_RUN, get_run

HUB_PREFIX = "JUPYTERHUB_SERVICE_PREFIX"  # set by JupyterHub (and so on the RSP) in the kernel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reduce_run_of(run_id: str) -> str:
    """The reduce run to open for a run: itself, a pipeline's, or the newest of an infer
    run's embeddings."""
    import mlflow

    run = get_run(run_id)
    stage = run.data.tags.get(TAG_STAGE)
    if stage == "reduce":
        return run_id
    if stage == "pipeline" and run.data.tags.get(TAG_STAGE_RUN + "reduce"):
        return run.data.tags[TAG_STAGE_RUN + "reduce"]
    embeddings = run_id if stage == "infer" else run.data.tags.get(TAG_INPUT + "embeddings")
    if embeddings:
        found = mlflow.search_runs(
            search_all_experiments=True, output_format="list", max_results=1,
            filter_string=f"tags.`{TAG_STAGE}` = 'reduce' AND attributes.status = 'FINISHED' "
                          f"AND tags.`{TAG_INPUT}embeddings` = '{embeddings}'",
            order_by=["attributes.start_time DESC"])
        if found:
            return found[0].info.run_id
    raise LineageError(f"run '{run_id}' ({stage}) has no reduce run to explore: make one "
                       "(hm.reduce(embeddings=...)) and pass it, or a pipeline run.")


class Explorer:
    """The explorer of one tracking store, served from this kernel and shown in the cell."""

    def __init__(self, run: str | None = None, cfg: Config | None = None, *,
                 tab: str = "explorer", proxy: bool | str | None = None,
                 port: int | None = None, height: int = 900) -> None:
        self.data = AppData(cfg)
        if run:
            self.data.preferred = reduce_run_of(run)
        self.port = port or _free_port()
        if proxy is None:  # behind a hub the kernel's port is out of the browser's reach
            proxy = HUB_PREFIX in os.environ
        self.through_proxy = proxy is not False
        base = proxy if isinstance(proxy, str) else os.environ.get(HUB_PREFIX, "/")
        self.path = base.rstrip("/") + f"/proxy/{self.port}/" if self.through_proxy else "/"
        self.app = create_app(cfg, self.data, tab=tab,
                              proxied=self.path if self.through_proxy else None)
        self.height = height
        self._selected: dict[str, Any] | None = None

        @self.app.callback(Input("explorer-selection", "data"))
        def remember(sel) -> None:  # the kernel keeps what the browser selected
            self._selected = sel

    @property
    def url(self) -> str:
        """Where the frame loads the app from: 127.0.0.1, or the proxy path (relative)."""
        return self.path if self.through_proxy else f"http://127.0.0.1:{self.port}/"

    def show(self, mode: str = "inline") -> Explorer:
        """Serve the app from this kernel (a thread) and show it in the cell."""
        from dash._jupyter import jupyter_dash

        if not jupyter_dash.active:
            raise HyraxError("hm.explore shows the explorer in a notebook cell (Jupyter); "
                             "from a terminal run `hyrax-mlops app`.")
        self.app.run(jupyter_mode=mode, jupyter_height=self.height, host="127.0.0.1",
                     port=self.port, jupyter_server_url="" if self.through_proxy else None)
        return self

    def selection(self) -> pd.DataFrame:
        """What is selected on the map now (lasso, box or clicked points), as the catalog
        rows of those objects (with the analysis columns the app shows) and their map
        coordinates; empty when nothing is selected."""
        sel = self._selected
        rows = selection.resolve(self.data, sel)
        if not sel or not len(rows):
            return pd.DataFrame(columns=["object_id"])
        reduction = self.data.reduction(sel["run"])
        table = reduction.catalog.iloc[rows].reset_index(drop=True)
        coords = reduction.maps[sel["map"]].set_index("row").loc[rows]
        for axis in [c for c in ("x", "y", "z") if c in coords]:
            table[f"{sel['map']}_{axis}"] = coords[axis].to_numpy()
        return table

    def _repr_html_(self) -> str:  # the object left as a cell's value shows the app too
        return (f'<iframe src="{self.url}" width="100%" height="{self.height}" '
                'style="border:0"></iframe>')


def explore(run: str | None = None, cfg: Config | None = None, **options: Any) -> Explorer:
    """Open the explorer in the notebook cell (see `Explorer`): `run` a reduce, infer or
    pipeline run to open on (default: the newest reduce run)."""
    return Explorer(run, cfg, **options).show()
