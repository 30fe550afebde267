"""The stock MLflow UI (`mlflow server`, real Chromium) on the demo store: the experiment opens
on its runs (model training, not GenAI traces), the train run shows its loss curves and its
logged model shows the best epoch's metrics, signature included, without switching a toggle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servers import free_port, stop, wait_http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # as in test_app.py
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")


@pytest.fixture
def mlflow_url(demo_store, demo_dir):
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{demo_dir / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_mlflow_ui_shows_runs_loss_curves_and_model(mlflow_url, demo_store):
    """MLflow 3.17's UI shows an experiment as GenAI (traces) unless the browser is switched to
    "Model training" (a toggle it remembers) or the link says `workflowType=machine_learning`:
    hyrax's experiment link says it, and hyrax tags its experiments as model training."""
    import mlflow
    from playwright.sync_api import sync_playwright

    result, cfg = demo_store
    train = mlflow.get_run(result["train"].run_id)
    eid = train.info.experiment_id
    assert mlflow.get_experiment(eid).tags["mlflow.experimentKind"] == "custom_model_development"
    pipeline = mlflow.get_run(train.data.tags["mlflow.parentRunId"]).info.run_name
    best_val = min(m.value for m in mlflow.MlflowClient().get_metric_history(
        train.info.run_id, "val_loss"))
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})  # every chart drawn
        page.set_default_timeout(20_000)
        try:
            # the experiment opens on its runs: the pipeline, its stages under it
            page.goto(f"{mlflow_url}/#/experiments/{eid}?workflowType=machine_learning")
            row = page.locator("[role=row]", has_text=pipeline).first
            row.wait_for()
            text = page.inner_text("body")
            assert "Runs" in text and "Models" in text and "No data available" not in text
            page.screenshot(path=str(SHOTS / "mlflow-ui-runs.png"))
            # the train run (by id: other tests add pipelines of the same name to this store):
            # its loss curves, one point per epoch
            page.goto(f"{mlflow_url}/#/experiments/{eid}/runs/{train.info.run_id}"
                      "?workflowType=machine_learning")
            page.get_by_text("Model metrics", exact=True).first.click()
            for metric in ("val_loss", "train_loss"):
                page.get_by_text(f"{train.info.run_name} ({metric})", exact=True).first.wait_for()
            page.screenshot(path=str(SHOTS / "mlflow-ui-train-metrics.png"))
            # its model, listed on the experiment's Models tab, with the best epoch's metrics
            page.goto(f"{mlflow_url}/#/experiments/{eid}/models?workflowType=machine_learning")
            model_id = train.data.tags["hyrax.model_uri"].rsplit("/", 1)[-1]  # m-...
            link = page.locator(f"a[href*='{model_id}']").first  # this run's model, not another
            link.wait_for()
            link.click()
            page.get_by_text("best_val_loss", exact=True).first.wait_for()
            page.screenshot(path=str(SHOTS / "mlflow-ui-model.png"))
            metrics = page.get_by_role("row").all_inner_texts()
            on_page = {r.split()[0]: r.split()[-1] for r in metrics if r.split()}  # name .. value
            assert float(on_page["val_loss"]) == pytest.approx(best_val)  # not the first epoch's
            assert float(on_page["best_val_loss"]) == pytest.approx(best_val)
            for key in ("train_loss", "test_loss", "final_val_loss", "final_train_loss"):
                assert key in on_page, sorted(on_page)
        finally:
            browser.close()
