"""Shared fixtures: a real MLflow store (SQLite in a temp dir), real Chroma, real UMAP, and
one small demo pipeline on real XDF galaxies that several tests read from."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DATA = Path(__file__).parent / "data"
N_DEMO = 300
DEMO_OVERRIDES = {
    "tracking.experiment": "test",
    "download.limit": N_DEMO,
    "train.epochs": 3,
    "model.latent_dim": 16,
    "model.widths": [16, 32, 32],
}


@contextlib.contextmanager
def in_store(directory: Path):
    """Work inside `directory` with its own SQLite tracking store."""
    import mlflow

    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(directory)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{directory / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        yield directory
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


@pytest.fixture
def store(tmp_path):
    """A fresh working directory and tracking store for one test."""
    with in_store(tmp_path) as d:
        yield d


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo(demo_dir):
    """The whole pipeline once, on the 300 brightest real XDF galaxies (session-wide)."""
    import hyrax_mlops as hm

    with in_store(demo_dir):
        cfg = hm.load_config(None, DEMO_OVERRIDES)
        result = hm.pipeline(cfg)
    return result, cfg


@pytest.fixture
def demo_store(demo, demo_dir):
    """Inside the demo pipeline's store: yields (PipelineResult, Config)."""
    with in_store(demo_dir):
        yield demo


@pytest.fixture
def demo_sandbox(demo, demo_dir, tmp_path):
    """The demo pipeline's runs in a private copy of its tracking store, for tests that add
    runs (analyses, peels, registrations): what they add never shows in the shared store that
    other tests (the app's) read. Artifacts of the demo runs are read where they are."""
    shutil.copy(demo_dir / "mlflow.db", tmp_path / "mlflow.db")
    with in_store(tmp_path):
        yield demo


def real_xdf_stamps(n: int) -> np.ndarray:
    """`n` real XDF stamps (n, 3, 64, 64), 8-bit display values in FITS row order, detected
    and cut as the xdf source does, spread from the brightest to the faintest."""
    from hyrax_mlops.sources.xdf import detect, load_xdf_image

    rgb, _ = load_xdf_image()
    m = detect(rgb, 3.0, 8)
    h, w, _ = rgb.shape
    out = []
    for k in np.argsort(-m["flux"]):
        x, y = int(round(m["x"][k])), int(round(m["y"][k]))
        if 32 <= x <= w - 32 and 32 <= y <= h - 32:
            out.append(rgb[y - 32:y + 32, x - 32:x + 32].transpose(2, 0, 1)[:, ::-1, :])
    pick = np.linspace(0, len(out) - 1, n).astype(int)
    return np.stack([out[i] for i in pick]).astype(np.float32)
