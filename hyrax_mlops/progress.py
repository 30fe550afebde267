"""The progress bars the stages draw: tqdm's, a widget in Jupyter where ipywidgets is installed
and text everywhere else. Without ipywidgets `tqdm.auto` falls back to text by itself, but first
prints a warning into the user's notebook telling them to install it: noise we keep off their
screen (the bars themselves stay)."""

from __future__ import annotations

import warnings

from tqdm.std import TqdmWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
