"""Sources a `download` run can fetch cutouts from, looked up by name.

A source is a function `(DownloadConfig, out_dir) -> manifest` that writes a dataset
(see `hyrax_mlops.data.dataset`) into `out_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyrax_mlops.config import DownloadConfig
from hyrax_mlops.registry import Registry

Source = Callable[[DownloadConfig, Path], dict[str, Any]]
SOURCES: Registry[Source] = Registry("source")

from hyrax_mlops.sources import xdf  # noqa: E402,F401  (built-ins register themselves)
