"""Library noise off the terminal: what MLflow (and friends) print that tells a user nothing.

Our own output (`tracking.say`, the training bar, stage summaries) is left alone. Everything
here is idempotent and cheap: call it where models are logged or loaded, and before MLflow
reads artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings

# MLflow reads this every time it would draw a "Downloading artifacts" bar
_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# MLflow colours these with ANSI codes, so the text is matched anywhere in the message
_WARNINGS = (
    r"(?s).*Add type hints to the `predict` method",
    r"(?s).*Type hint used in the model's predict function is not supported",
    r"(?s).*Any type hint is inferred as AnyType",
    r"(?s).*Hint: Inferred schema contains integer column",
)
# INFO lines of a fresh SQLite store ("Creating initial MLflow database tables...") and of
# model logging ("Inferring model signature from input example")
_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.pyfunc",
            "mlflow.models")


def quiet_mlflow() -> None:
    """No artifact progress bars, no type-hint warnings on model logging, no schema INFO
    lines. `MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR` is forced off unless the user asked for the
    bars ("true"): an empty or unset value would still show them."""
    for key, value in _ENV.items():
        if os.environ.get(key, "").strip().lower() not in ("true", "1"):
            os.environ[key] = value
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
    # MLflow wraps model logging in `simplefilter("once")`, ahead of any filter of ours: the
    # warnings are also dropped where they would be shown
    if not getattr(warnings.showwarning, "_hyrax_quiet", False):
        warnings.showwarning = _without_noise(warnings.showwarning)
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_lancedb() -> None:
    """LanceDB's Rust warnings off the terminal: training an IVF index on a dense catalogue's
    embeddings printed hundreds of "KMeans: more than 10% of clusters are empty" lines. Its
    logger reads `LANCEDB_LOG` once, when lancedb is first imported (pylance's, the query
    side's, `LANCE_LOG`): call this before; a level the user set is kept."""
    os.environ.setdefault("LANCEDB_LOG", "error")
    os.environ.setdefault("LANCE_LOG", "error")


def _noise(message) -> bool:
    return any(re.match(p, str(message)) for p in _WARNINGS)


def _without_noise(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _noise(message):
            show(message, category, filename, lineno, file, line)

    showwarning._hyrax_quiet = True
    return showwarning


@contextlib.contextmanager
def quiet_model_warnings():
    """Around a block that logs or loads an MLflow model: its type-hint warnings are not
    shown (the filter lives only inside the block; `quiet_mlflow` sets it process-wide)."""
    with warnings.catch_warnings():
        for pattern in _WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield


def headless_figures() -> None:
    """Figures the stages write to files need no window: Agg, so that a desktop's GUI backend
    never opens one (or breaks in a worker thread). Inside a Jupyter kernel the notebook's
    own backend (inline) is left as it is: a user's plots must keep showing after a stage."""
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
