"""Which run `mlflow run` made for this launch, and whether the stage the user asked for has
taken it over yet: the state a launch hands from its entry point to the first requested stage.

`mlflow run` passes its run to the entry point as MLFLOW_RUN_ID and MLflow deletes that
variable once a run has been started, so the process's context reads it at import. Stages run
as prerequisites of the requested one (`upstream()`) never take the launcher's run; the first
requested stage does (`claim()`), once. `run_context()` gives a block its own context (a
launch within a launch, or a test), without touching the process's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RunContext:
    launcher_run_id: str | None = None
    claimed: bool = False
    upstream_depth: int = 0

    def launcher(self) -> str | None:
        """The `mlflow run` run of this launch, if any (read again while none is known)."""
        if self.launcher_run_id is None:
            self.launcher_run_id = os.environ.get("MLFLOW_RUN_ID") or None
        return self.launcher_run_id

    def claim(self) -> str | None:
        """The launcher's run, the first time a requested (not upstream) stage asks for it."""
        launcher = self.launcher()
        if not launcher or self.claimed or self.upstream_depth:
            return None
        self.claimed = True
        return launcher

    @contextlib.contextmanager
    def upstream(self) -> Iterator[None]:
        """Stages run inside this block are prerequisites: they never take the launcher's run."""
        self.upstream_depth += 1
        try:
            yield
        finally:
            self.upstream_depth -= 1


_PROCESS = RunContext(os.environ.get("MLFLOW_RUN_ID") or None)
_CURRENT: ContextVar[RunContext | None] = ContextVar("hyrax_run_context", default=None)


def current() -> RunContext:
    """The context of the running block (`run_context`), else the process's."""
    return _CURRENT.get() or _PROCESS


def upstream() -> contextlib.AbstractContextManager[None]:
    """`with upstream():` in the current context."""
    return current().upstream()


@contextlib.contextmanager
def run_context(launcher_run_id: str | None = None) -> Iterator[RunContext]:
    """A fresh context for the block: its own launcher run (none by default), unclaimed."""
    context = RunContext(launcher_run_id)
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)
