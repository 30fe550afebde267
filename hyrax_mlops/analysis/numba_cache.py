"""Keep UMAP's numba compilations on disk, so only the first `reduce` on a machine pays them.

umap-learn jit-compiles its kernels without `cache=True`: every fresh process spends 45-110 s
compiling before the first fit. numba can cache any module-level function it compiled; we turn
that on for umap's and pynndescent's kernels, under a cache directory of ours (the compiled
code is keyed by numba to the source file, its timestamp and this CPU, so an upgrade of
umap-learn or a different machine recompiles instead of loading stale code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGES = ("umap", "pynndescent")
_covered: int | None = None  # set once the cache is enabled in this process


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "hyrax-mlops" / "numba"


def enable_persistent_cache(cache_dir: Path | None = None) -> int:
    """Cache umap's and pynndescent's jitted functions on disk; returns how many it covered.

    Call before the first fit. `NUMBA_CACHE_DIR`, when set, wins over `cache_dir`. Later
    calls in the same process return at once.
    """
    global _covered
    if _covered is not None:
        return _covered
    target = Path(os.environ.get("NUMBA_CACHE_DIR") or cache_dir or default_cache_dir())
    target.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    from numba.core import config

    if str(target) != config.CACHE_DIR:
        config.reload_config()
    import umap  # noqa: F401  (imports the modules whose kernels we cache)
    from numba.core.dispatcher import Dispatcher

    covered = 0
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in _PACKAGES:
            continue
        for obj in list(vars(module).values()):
            if not isinstance(obj, Dispatcher) or obj._cache.__class__.__name__ != "NullCache":
                continue
            try:
                obj.enable_caching()
                covered += 1
            except Exception:  # e.g. a closure numba cannot cache: it compiles as before
                continue
    _covered = covered
    return covered
