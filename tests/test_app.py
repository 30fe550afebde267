"""The web app in a real browser (headless Chromium via Playwright) against a real MLflow store
holding a pipeline run on real XDF galaxies. Screenshots land in test-artifacts/."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from servers import app_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test "
                                                         "installs it)")


@pytest.fixture(scope="module")
def app_url(demo, demo_dir):
    with app_server(demo_dir, f"sqlite:///{demo_dir / 'mlflow.db'}") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def plot_ready(page, graph: str) -> None:
    page.wait_for_function(
        f"() => {{ const g = document.querySelector('#{graph} .js-plotly-plot');"
        " return g && g._fullData && g._fullData.length > 0; }")


def open_explorer(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Explorer", exact=True).click()
    plot_ready(page, "explorer-graph")
    page.wait_for_function("() => document.querySelector('#explorer-info').innerText"
                           ".includes('objects in view')")


def test_runs_table_lists_the_pipeline_runs_and_their_lineage(page, app_url, demo):
    result, _ = demo
    page.goto(app_url)
    page.wait_for_selector("#runs-grid .ag-row")
    grid_text = page.inner_text("#runs-grid")
    for stage in ("pipeline", "download", "train", "infer", "index", "reduce"):
        assert stage in grid_text
    assert result["reduce"].run_id in grid_text
    page.locator("#runs-grid .ag-row", has_text=result["train"].run_id).first.click()
    page.wait_for_selector("#runs-lineage button")
    lineage_text = page.inner_text("#runs-lineage")
    assert "dataset: download " + result["dataset"].run_id[:8] in lineage_text
    assert "infer " + result["infer"].run_id[:8] in lineage_text  # used by
    page.locator("#runs-metric").click()
    page.get_by_text("val_loss", exact=True).last.click()
    page.wait_for_function("() => document.querySelector('#runs-curves .js-plotly-plot')"
                           "._fullData.length > 0")
    page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)


def test_explorer_selection_thumbnails_neighbours_and_export(page, app_url, demo_store):
    result, cfg = demo_store
    open_explorer(page, app_url)
    assert "300 objects in view" in page.inner_text("#explorer-info")
    page.screenshot(path=str(SHOTS / "explorer-map.png"), full_page=True)

    # lasso a polygon over the middle of the plot area
    box = page.locator("#explorer-graph .nsewdrag").first.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    corners = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.21)]
    page.mouse.move(x0 + w * corners[0][0], y0 + h * corners[0][1])
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#explorer-selection-info')"
                           ".innerText.includes('objects selected')")
    n_selected = int(page.inner_text("#explorer-selection-info").split()[0].replace(",", ""))
    assert 0 < n_selected < 300
    page.wait_for_selector(".thumb-tile img")
    assert page.locator(".thumb-tile").count() == min(6, n_selected)
    page.wait_for_selector("#explorer-table .ag-row")
    table_ids = set(page.locator("#explorer-table .ag-row [col-id='object_id']").all_inner_texts())
    assert table_ids
    first = page.locator(".thumb-tile").first.get_attribute("data-object-id")
    page.click("#explorer-resample")
    page.wait_for_function(f"() => document.querySelector('.thumb-tile')"
                           f".getAttribute('data-object-id') !== '{first}'", timeout=10_000) \
        if n_selected > 6 else None
    page.screenshot(path=str(SHOTS / "explorer-selection.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#explorer-export")
    csv = pd.read_csv(download.value.path())
    assert len(csv) == n_selected and csv["object_id"].is_unique
    assert {"umap_2d_x", "umap_2d_y", "flux"} <= set(csv.columns)
    assert table_ids <= set(csv["object_id"])

    # neighbours of a typed id: the object itself first, then k more
    page.fill("#explorer-search-id", "XDF00007")
    page.press("#explorer-search-id", "Enter")
    page.wait_for_selector(".neighbour-tile")
    captions = page.locator(".neighbour-tile figcaption").all_inner_texts()
    assert captions[0].startswith("XDF00007 d=") and len(captions) == 9
    from hyrax_mlops.search import search_by_id

    expected = search_by_id(result["index"].run_id, "XDF00007", k=9, cfg=cfg)["object_id"]
    assert [c.split()[0] for c in captions] == list(expected)

    # "search from these": neighbours of the selection, none of which is selected
    page.click("#explorer-search-selection")
    page.wait_for_function("() => document.querySelector('#explorer-neighbours')"
                           ".innerText.includes('selected objects')")
    found = {c.split()[0] for c in page.locator(".neighbour-tile figcaption").all_inner_texts()}
    assert found and not (found & set(csv["object_id"]))
    page.screenshot(path=str(SHOTS / "explorer-neighbours.png"), full_page=True)

    # a reference catalog by object_id: matched objects drawn as their own trace
    ref = SHOTS / "reference.csv"
    pd.DataFrame({"object_id": ["XDF00001", "XDF00002", "XDF00003", "NOT_HERE"]}).to_csv(
        ref, index=False)
    page.set_input_files("#explorer-reference-upload input[type=file]", str(ref))
    page.wait_for_function("() => document.querySelector('#explorer-reference-info')"
                           ".innerText.includes('3 of 4 reference objects matched')")
    page.wait_for_function("() => document.querySelector('#explorer-graph .js-plotly-plot')"
                           "._fullData.some(t => t.name === 'reference' && t.x.length === 3)")

    # the compare view highlights the same selection and reference objects
    page.get_by_text("Compare", exact=True).click()
    page.wait_for_selector("#compare-graphs .js-plotly-plot")
    page.wait_for_function(f"() => document.querySelector('#compare-info').innerText"
                           f".includes('{n_selected:,} selected objects')")
    names = page.evaluate("() => [...document.querySelectorAll('#compare-graphs .js-plotly-plot')]"
                          ".map(g => g._fullData.map(t => t.name))")
    assert names and all("selection" in n and "reference" in n for n in names)
    page.screenshot(path=str(SHOTS / "compare-highlight.png"), full_page=True)


def test_clicking_a_point_shows_its_neighbours(page, app_url):
    open_explorer(page, app_url)
    xy = page.evaluate("""() => {
        const g = document.querySelector('#explorer-graph .js-plotly-plot');
        const t = g._fullData[0], L = g._fullLayout;
        const box = g.querySelector('.nsewdrag').getBoundingClientRect();
        return {x: box.left + L.xaxis.l2p(t.x[0]), y: box.top + L.yaxis.l2p(t.y[0]),
                id: t.customdata[0]};
    }""")
    page.mouse.click(xy["x"], xy["y"])
    page.wait_for_function(f"() => document.querySelector('#explorer-neighbours')"
                           f".innerText.includes('Neighbours of {xy['id']}')")
    assert page.locator(".neighbour-tile").first.get_attribute("data-object-id") == xy["id"]


def test_3d_map_and_compare_view(page, app_url):
    open_explorer(page, app_url)
    page.locator("#explorer-map").click()
    page.get_by_text("umap_3d", exact=True).last.click()
    page.wait_for_function("() => document.querySelector('#explorer-info').innerText"
                           ".includes('3D view')")
    plot_ready(page, "explorer-graph")
    assert page.evaluate("() => document.querySelector('#explorer-graph .js-plotly-plot')"
                         "._fullData[0].type") == "scatter3d"
    page.get_by_text("Compare", exact=True).click()
    page.wait_for_selector("#compare-graphs .js-plotly-plot")
    time.sleep(1)
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)


def test_app_refuses_to_bind_beyond_loopback_without_a_token(demo_dir, tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "hyrax-mlops"
    done = subprocess.run([str(exe), "app", "--host", "0.0.0.0", "--port", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 2 and "HYRAX_APP_TOKEN" in done.stderr


def test_token_is_required_when_set(demo, demo_dir):
    with app_server(demo_dir, f"sqlite:///{demo_dir / 'mlflow.db'}",
                    extra_env={"HYRAX_APP_TOKEN": "s3cret-token"}) as url:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        assert err.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret-token"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200 and b"hyrax-mlops" in resp.read()
