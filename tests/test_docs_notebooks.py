"""The notebooks in docs/notebooks, run top to bottom in a real Jupyter kernel (nbclient), each
in a fresh working directory and tracking store, as a user would open them: every cell runs,
the checks they end with hold, and what they show is there (the explorer's frame, tables,
figures)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "docs" / "notebooks"


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return book


def shown(book, mime: str) -> list[str]:
    """Every output of type `mime` the notebook displayed, in order."""
    return [out["data"][mime] for cell in book.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if mime in out.get("data", {})]


def printed(book) -> str:
    """Everything the notebook's cells printed (stdout and stderr)."""
    return "".join(out.get("text", "") for cell in book.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(
        ["discovery.ipynb", "own_cutouts.ipynb", "multimodal_classifier.ipynb",
         "spectrum_search.ipynb"])


def test_the_discovery_loop_notebook(store):
    book = execute("discovery.ipynb", store)
    frames = [h for h in shown(book, "text/html") if "<iframe" in h]
    assert len(frames) == 1 and "http://127.0.0.1:" in frames[0]  # the explorer, in its cell
    assert len(shown(book, "image/png")) == 1  # the outliers' stamps
    tables = [h for h in shown(book, "text/html") if "outlier_score" in h]
    assert tables  # the outliers table, as a DataFrame


@pytest.mark.parametrize("name", ["own_cutouts.ipynb", "multimodal_classifier.ipynb",
                                  "spectrum_search.ipynb"])
def test_the_notebook_runs_top_to_bottom(store, name):
    book = execute(name, store)
    assert shown(book, "text/html")  # its DataFrames, shown as tables
    # the stages' progress bars are drawn, as text where ipywidgets is not installed, without
    # tqdm's warning telling the user to install it
    out = printed(book)
    assert "100%|" in out and "IProgress not found" not in out
