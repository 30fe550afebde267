"""The explorer inside a notebook (issue 18): `hm.explore(run)` run in a real Jupyter kernel
shows the app in the cell's output, reached as JupyterLab on a hub reaches it (through
jupyter-server-proxy under a path prefix); a lasso drawn on it in Chromium comes back to the
kernel as a DataFrame."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from browser import lasso
from kernels import jupyter_server, kernel, run_cell, static_files

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_the_inline_explorer_behind_jupyter_server_proxy_returns_the_selection(
        demo_sandbox, tmp_path, page):
    import mlflow

    result, _ = demo_sandbox
    base = "/nb/user/astronomer/"  # where the RSP serves a user's JupyterLab
    hub = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "JUPYTERHUB_SERVICE_PREFIX": base}  # as the hub sets it in the kernel
    with jupyter_server(tmp_path, base) as (jupyter, token), kernel(tmp_path, hub) as kc:
        _, shown = run_cell(kc, f"import hyrax_mlops as hm\n"
                                f"ex = hm.explore({result.run_id!r})")
        html = next(d["text/html"] for d in shown if "text/html" in d)
        src = re.search(r'src="([^"]+)"', html).group(1)
        # relative, under the user's base: through the notebook's own server
        assert re.fullmatch(r"/nb/user/astronomer/proxy/\d+/", src), src
        # The cell's output as JupyterLab shows it: in a page of the Jupyter server's origin
        # (here a static page, itself served through the proxy), the frame's relative address
        # resolving there
        (tmp_path / "cell.html").write_text(f"<html><body>{html}</body></html>")
        with static_files(tmp_path) as files_port:
            page.goto(f"{jupyter}/proxy/{files_port}/cell.html?token={token}")
            frame = page.frame_locator("iframe")
            frame.locator("#explorer-graph .js-plotly-plot .nsewdrag").first.wait_for()
            frame.locator("#explorer-info").filter(has_text="objects in view").wait_for()
            lasso(page, frame.locator("#explorer-graph .nsewdrag"))
            info = frame.locator("#explorer-selection-info").filter(has_text="objects selected")
            info.wait_for()
            n_selected = int(info.inner_text().split()[0].replace(",", ""))
            assert 0 < n_selected < 300
            frame.locator("#explorer-table .ag-row").first.wait_for()
            in_table = set(frame.locator("#explorer-table .ag-row [col-id='object_id']")
                           .all_inner_texts())
            page.screenshot(path=str(tmp_path / "notebook-explorer.png"), full_page=True)

        text, _ = run_cell(kc, "import json\nsel = ex.selection()\n"
                               "print(json.dumps({'ids': sel['object_id'].tolist(), "
                               "'columns': list(sel.columns)}))")
        got = json.loads(text)
    assert len(got["ids"]) == n_selected and len(set(got["ids"])) == n_selected
    assert in_table <= set(got["ids"])
    assert {"object_id", "flux", "umap_2d_x", "umap_2d_y"} <= set(got["columns"])
