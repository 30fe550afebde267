"""The web app in a real browser (headless Chromium via Playwright) against a real MLflow store
holding a pipeline run on real XDF galaxies. Screenshots land in test-artifacts/."""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import lasso

from servers import app_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# HYRAX_DOCS_IMG=1 also refreshes the README's screenshots in docs/img from these tests
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"

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


def shot(page, name: str, docs: str | None = None) -> None:
    page.screenshot(path=str(SHOTS / name), full_page=True)
    if docs and os.environ.get("HYRAX_DOCS_IMG") == "1":
        page.screenshot(path=str(DOCS_IMG / docs), full_page=True)


def trace_lengths(page, graph: str = "explorer-graph") -> dict:
    """Points per trace name in a drawn plot, as the browser holds them."""
    return page.evaluate(f"() => Object.fromEntries(document.querySelector('#{graph} "
                         ".js-plotly-plot')._fullData.map(t => [t.name, (t.x || []).length]))")


def wait_trace(page, name: str, n: int, graph: str = "explorer-graph") -> None:
    page.wait_for_function(f"() => document.querySelector('#{graph} .js-plotly-plot')"
                           f"._fullData.some(t => t.name === '{name}' && t.x.length === {n})")


def plot_ready(page, graph: str) -> None:
    page.wait_for_function(
        f"() => {{ const g = document.querySelector('#{graph} .js-plotly-plot');"
        " return g && g._fullData && g._fullData.length > 0; }")


# the index of the point to hover in the map's first trace: the object with customdata
# `target`, or the first point when null; or, given a list `among`, the one of them farthest
# (on screen) from any other point, so that the hover lands on it and on nothing else
PICK_POINT = """([target, among]) => {
    const g = document.querySelector('#explorer-graph .js-plotly-plot');
    const t = g._fullData[0], L = g._fullLayout;
    const box = g.querySelector('.nsewdrag').getBoundingClientRect();
    const px = i => [box.left + L.xaxis.l2p(t.x[i]), box.top + L.yaxis.l2p(t.y[i])];
    let best = target === null ? 0 : t.customdata.indexOf(target);
    if (among) {
        let far = -1;
        t.customdata.forEach((id, i) => {
            if (!among.includes(id)) return;
            const [x, y] = px(i);
            let near = Infinity;
            for (let j = 0; j < t.x.length; j++) if (j !== i) {
                const [u, v] = px(j); near = Math.min(near, Math.hypot(u - x, v - y)); }
            if (near > far) { far = near; best = i; }
        });
    }
    const [x, y] = px(best);
    return {x: x, y: y, id: t.customdata[best]};
}"""


def hover_point(page, target: str | None = None, among: list[str] | None = None):
    """Hover a point of the explorer's map (see PICK_POINT) until its card shows: (the point's
    {x, y, id}, the card)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    card = page.locator(".hover-card")
    for _ in range(8):  # the map may still be laying out (its colour bar moves the axes)
        xy = page.evaluate(PICK_POINT, [target, among])
        page.mouse.move(xy["x"] - 30, xy["y"] - 30)
        page.mouse.move(xy["x"], xy["y"], steps=5)
        try:
            card.wait_for(state="visible", timeout=6_000)  # a loaded machine renders slowly
            break
        except PlaywrightTimeout:
            continue
    card.wait_for(state="visible", timeout=10_000)
    return xy, card


def open_explorer(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Explorer", exact=True).click()
    plot_ready(page, "explorer-graph")
    page.wait_for_function("() => document.querySelector('#explorer-info').innerText"
                           ".includes('objects in view')")


def test_runs_table_lists_the_pipeline_runs_and_their_lineage(page, app_url, demo_store):
    import mlflow

    result, _ = demo_store
    train_id = result["train"].run_id
    page.goto(app_url)
    page.wait_for_selector("#runs-grid .ag-row")
    grid_text = page.inner_text("#runs-grid")
    for stage in ("pipeline", "download", "train", "infer", "index", "reduce"):
        assert stage in grid_text
    assert result["reduce"].run_id in grid_text
    n_runs = len(mlflow.search_runs(search_all_experiments=True))
    assert page.inner_text("#runs-message") == f"{n_runs} runs"
    # the numbers show: the train run's final val_loss as the grid displays it
    cell = page.locator(f"#runs-grid .ag-center-cols-container .ag-row[row-id='{train_id}'] "
                        "[col-id='metrics.val_loss']")
    expected = mlflow.get_run(train_id).data.metrics["val_loss"]
    assert float(cell.inner_text()) == pytest.approx(expected, abs=1e-3)
    batch = page.locator(f"#runs-grid .ag-center-cols-container .ag-row[row-id='{train_id}'] "
                         "[col-id='params.data.batch_size']")
    assert batch.inner_text() == mlflow.get_run(train_id).data.params["data.batch_size"]
    # every column shown has a value in at least one run
    filled = page.evaluate("""() => {
        const out = {};
        document.querySelectorAll('#runs-grid .ag-center-cols-container .ag-cell').forEach(c => {
            const k = c.getAttribute('col-id');
            out[k] = (out[k] || 0) + (c.innerText.trim() ? 1 : 0);
        });
        return out;
    }""")
    filled.pop("ag-Grid-SelectionColumn")  # the checkboxes
    assert len(filled) > 10 and not [k for k, n in filled.items() if n == 0]
    # nothing selected yet: the plots say what to do instead of showing bare axes
    assert "Select runs in the grid" in page.text_content("#runs-curves")
    assert "Pick a metric" in page.text_content("#runs-parcoords")
    page.locator("#runs-grid .ag-row", has_text=result["train"].run_id).first.click()
    page.wait_for_selector("#runs-lineage button")
    lineage_text = page.inner_text("#runs-lineage")
    assert "dataset: download " + result["dataset"].run_id[:8] in lineage_text
    assert "infer " + result["infer"].run_id[:8] in lineage_text  # used by
    page.locator("#runs-metric").click()
    page.get_by_text("val_loss", exact=True).last.click()
    page.wait_for_function("() => document.querySelector('#runs-curves .js-plotly-plot')"
                           "._fullData.length > 0")
    history = mlflow.MlflowClient().get_metric_history(train_id, "val_loss")
    assert trace_lengths(page, "runs-curves") == {
        f"{mlflow.get_run(train_id).data.tags['mlflow.runName']} {train_id[:6]}": len(history)}
    page.locator("#runs-parcoords-metric").click()
    page.get_by_text("val_loss", exact=True).last.click()
    # one train run in the demo: nothing to set against val_loss, and the plot says so
    page.wait_for_function("() => document.querySelector('#runs-parcoords').textContent"
                           ".includes('val_loss differs between fewer than two')")
    shot(page, "runs.png", docs="runs.png")


def test_explorer_selection_thumbnails_neighbours_and_export(page, app_url, demo_store):
    result, cfg = demo_store
    open_explorer(page, app_url)
    assert "300 objects in view" in page.inner_text("#explorer-info")
    page.screenshot(path=str(SHOTS / "explorer-map.png"), full_page=True)

    lasso(page, page.locator("#explorer-graph .nsewdrag"))  # over the middle of the plot
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
    # the map marks the lasso's objects and the neighbours found
    wait_trace(page, "neighbours", len(found))
    assert trace_lengths(page)["selection"] == n_selected
    shot(page, "explorer-neighbours.png", docs="explorer.png")

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
                           f".includes('{n_selected:,} selected object')")
    names = page.evaluate("() => [...document.querySelectorAll('#compare-graphs .js-plotly-plot')]"
                          ".map(g => g._fullData.map(t => t.name))")
    assert names and all("selection" in n and "reference" in n for n in names)
    page.screenshot(path=str(SHOTS / "compare-highlight.png"), full_page=True)


def test_first_hour_walk_numbers_hover_cutout_neighbours_and_compare(page, app_url, demo_store):
    """The README's first hour after `make demo` and `make app`, as a user sees it: the Runs
    grid shows the train run's numbers, hovering a point on the map shows its cutout, clicking
    it marks its neighbours on the map, and Compare opens on two different, drawn maps."""
    import mlflow

    result, _ = demo_store
    train_id = result["train"].run_id
    page.goto(app_url)  # the app opens on Runs
    cell = page.locator(f"#runs-grid .ag-center-cols-container .ag-row[row-id='{train_id}'] "
                        "[col-id='metrics.best_val_loss']")
    cell.wait_for()
    best = mlflow.get_run(train_id).data.metrics["best_val_loss"]
    assert float(cell.inner_text()) == pytest.approx(best, abs=1e-3)

    page.get_by_text("Explorer", exact=True).click()
    plot_ready(page, "explorer-graph")
    page.wait_for_function("() => document.querySelector('#explorer-info').innerText"
                           ".includes('objects in view')")
    # hover: a card with the object's cutout and its non-empty columns
    xy, card = hover_point(page)
    img = card.locator(".hover-tile img")
    assert img.get_attribute("alt") == xy["id"]
    hover_src = img.get_attribute("src")
    assert hover_src.startswith("data:image/png;base64,") and len(hover_src) > 200
    text = card.inner_text()
    assert xy["id"] in text and "flux: " in text and "nan" not in text.lower()
    shot(page, "explorer-hover.png")

    page.mouse.click(xy["x"], xy["y"])
    page.wait_for_function(f"() => document.querySelector('#explorer-neighbours')"
                           f".innerText.includes('Neighbours of {xy['id']}')")
    tile = page.locator(".neighbour-tile").first
    assert tile.get_attribute("data-object-id") == xy["id"]
    # the hover showed the same cutout as the object's own neighbour tile
    assert tile.locator("img").get_attribute("src") == hover_src
    # the clicked point and its 8 neighbours are marked on the map
    wait_trace(page, "neighbours", 9)
    marked = page.evaluate("() => document.querySelector('#explorer-graph .js-plotly-plot')"
                           "._fullData.find(t => t.name === 'neighbours').customdata")
    assert set(marked) == set(page.locator(".neighbour-tile").evaluate_all(
        "ts => ts.map(t => t.getAttribute('data-object-id'))"))

    # Compare: one reduce run in the demo, so its UMAP and PCA maps side by side, both drawn
    page.get_by_text("Compare", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#compare-graphs .js-plotly-plot')"
                           ".length === 2")
    page.wait_for_function("() => [...document.querySelectorAll('#compare-graphs "
                           ".js-plotly-plot')].every(g => g._fullData && g._fullData.length)")
    panels = page.evaluate("""() => [...document.querySelectorAll(
        '#compare-graphs .js-plotly-plot')].map(g => ({title: g._fullLayout.title.text,
        points: g._fullData.reduce((n, t) => n + (t.x || []).length, 0)}))""")
    titles = [p["title"] for p in panels]
    assert len(set(titles)) == 2 and titles[0].startswith("umap_2d"), titles
    assert all(p["points"] >= 300 for p in panels), panels  # every object, in each map
    assert "2D maps are shown side by side" in page.inner_text("#compare-info")
    shot(page, "compare-first-hour.png")


def test_hovering_a_flagged_outlier_shows_where_its_residual_is(page, demo, demo_dir, tmp_path):
    """After `analyse`, a flagged outlier's hover card shows its residual map (where the model
    could not reproduce it) beside its cutout, and why it ranked; an ordinary object's card
    shows its cutout alone."""
    import hyrax_mlops as hm

    from conftest import in_store

    result, cfg = demo
    shutil.copy(demo_dir / "mlflow.db", tmp_path / "mlflow.db")  # the demo's runs, privately
    with in_store(tmp_path):
        hm.analyse(cfg, {"analyse.analyses": ["outliers"]}, embeddings=result["infer"].run_id)
        import mlflow

        run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment],
                                 filter_string="tags.`hyrax.stage` = 'analyse'",
                                 output_format="list")[0]
        table = pd.read_parquet(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="analysis/outliers.parquet"))
    flagged = table.loc[table["is_outlier"], "object_id"].astype(str).tolist()
    assert len(flagged) == 15
    with app_server(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}") as url:
        open_explorer(page, url)
        xy, card = hover_point(page, among=flagged)
        assert xy["id"] in flagged and xy["id"] in card.inner_text()
        residual = card.locator(".hover-residual-tile img")
        residual.wait_for()
        assert residual.get_attribute("alt") == f"residual of {xy['id']}"
        assert residual.get_attribute("src").startswith("data:image/png;base64,")
        assert residual.get_attribute("src") != card.locator(".hover-tile img").get_attribute("src")
        why = table.set_index("object_id").loc[xy["id"], "explained_by"]
        assert f"outlier_why: {why}" in card.inner_text()
        shot(page, "explorer-hover-residual.png")
        ordinary = table.loc[~table["is_outlier"], "object_id"].astype(str).tolist()
        xy, card = hover_point(page, among=ordinary)
        page.wait_for_function(f"() => document.querySelector('.hover-card').innerText"
                               f".includes('{xy['id']}')")
        assert card.locator(".hover-residual-tile").count() == 0


def test_3d_map_and_compare_view(page, app_url):
    open_explorer(page, app_url)
    page.locator("#explorer-map").click()
    page.get_by_text("umap_3d", exact=True).last.click()
    page.wait_for_function("() => document.querySelector('#explorer-info').innerText"
                           ".includes('3D view')")
    plot_ready(page, "explorer-graph")
    assert page.evaluate("() => document.querySelector('#explorer-graph .js-plotly-plot')"
                         "._fullData[0].type") == "scatter3d"
    # neighbours of a typed id are marked in 3D too
    page.fill("#explorer-search-id", "XDF00007")
    page.press("#explorer-search-id", "Enter")
    page.wait_for_selector(".neighbour-tile")
    wait_trace(page, "neighbours", 9)
    assert page.evaluate("() => document.querySelector('#explorer-graph .js-plotly-plot')"
                         "._fullData.find(t => t.name === 'neighbours').type") == "scatter3d"
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


def test_tsne_maps_show_in_the_explorer_and_in_compare(page, demo, demo_dir, tmp_path):
    """`reduce.methods = ["tsne"]` makes openTSNE maps in 2D and 3D (fitted on a sample when
    the set is larger than `tsne_fit_sample`, the rest placed); the explorer opens on them and
    compare offers them beside the demo's UMAP run."""
    import mlflow

    import hyrax_mlops as hm

    from conftest import N_DEMO, in_store

    result, cfg = demo
    shutil.copy(demo_dir / "mlflow.db", tmp_path / "mlflow.db")
    with in_store(tmp_path):
        run = hm.reduce(cfg, {"reduce.methods": ["tsne"], "reduce.tsne_fit_sample": 200},
                        embeddings=result["infer"].run_id)
        got = mlflow.get_run(run.run_id)
        assert got.data.metrics["tsne_2d_fit_sample"] == 200  # 200 fitted, 100 placed
        for dims in (2, 3):
            table = pd.read_parquet(mlflow.artifacts.download_artifacts(
                run_id=run.run_id, artifact_path=f"reductions/tsne_{dims}d.parquet"))
            coords = table.drop(columns="object_id").to_numpy()
            assert coords.shape == (N_DEMO, dims) and np.isfinite(coords).all()
            assert coords.std(axis=0).min() > 1  # spread out, not collapsed on a point
        html = mlflow.artifacts.load_text(f"runs:/{run.run_id}/reductions.html")
        assert "TSNE 2D" in html and "TSNE 3D" in html
    with app_server(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}") as url:
        open_explorer(page, url)  # the newest reduce run: t-SNE's
        assert "tsne_2d" in page.inner_text("#explorer-map")
        points = page.evaluate("() => document.querySelector('#explorer-graph .js-plotly-plot')"
                               "._fullData.reduce((n, t) => n + (t.x || []).length, 0)")
        assert points >= N_DEMO
        page.get_by_text("Compare", exact=True).click()
        page.locator("#compare-map").click()
        page.get_by_text("tsne_2d", exact=True).last.click()
        page.wait_for_function("() => [...document.querySelectorAll('#compare-graphs "
                               ".js-plotly-plot')].some(g => g._fullLayout && "
                               "g._fullLayout.title.text.startsWith('tsne_2d'))")
        shot(page, "compare-tsne.png")


def test_the_app_under_a_path_prefix_for_a_reverse_proxy(page, demo, demo_dir):
    """`hyrax-mlops app --url-prefix /hyrax/`: every page and request under the prefix, as a
    reverse proxy passing /hyrax/... through reaches it; nothing answers outside it."""
    with app_server(demo_dir, f"sqlite:///{demo_dir / 'mlflow.db'}",
                    args=("--url-prefix", "hyrax"), path="/hyrax/") as url:
        assert url.endswith("/hyrax/")
        with pytest.raises(urllib.error.HTTPError) as outside:
            urllib.request.urlopen(url.replace("/hyrax/", "/_dash-layout"), timeout=10)
        assert outside.value.code == 404
        with urllib.request.urlopen(url.replace("/hyrax/", "/"), timeout=10) as bare:
            assert bare.url == url  # the bare address leads to the app
        open_explorer(page, url)
        assert "300 objects in view" in page.inner_text("#explorer-info")
        assert page.url.startswith(url)
