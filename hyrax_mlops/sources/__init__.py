"""Sources a `download` run can fetch cutouts from, looked up by name.

A source is a function `(DownloadConfig, out_dir, ctx) -> manifest` that writes a dataset
(see `hyrax_mlops.data.dataset`) into `out_dir`; `ctx` (`survey.DownloadContext`) holds the
run's work directory, kept across a kill so a resumed run fetches only what is missing.
A source that makes its own catalog declares its columns (`catalog_columns`), so the columns
a config names are checked before the download. Survey services (HSC, Rubin, Euclid) share
`survey.download_survey` and the download engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyrax_mlops.config import DownloadConfig
from hyrax_mlops.registry import Registry

Source = Callable[[DownloadConfig, Path, Any], dict[str, Any]]
SOURCES: Registry[Source] = Registry(
    "source", builtins=("hyrax_mlops.sources.hsc", "hyrax_mlops.sources.rubin",
                        "hyrax_mlops.sources.euclid", "hyrax_mlops.sources.xdf"))
