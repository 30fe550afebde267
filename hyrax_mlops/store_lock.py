"""File locks that let several hyrax processes share one local tracking store.

`schema_lock(uri)`: the first MLflow call on a fresh SQLite store creates its schema; two
processes doing it at once break the store for good. It is serialised on `<db>.lock`.

`stage_lock(uri, key)`: held while a stage with one identity looks for a reusable run and,
finding none, runs; a second process with the same stage waits, then reuses the run.
Lock files live in `.hyrax-locks/` next to the SQLite file (or the `mlruns` folder). A
tracking server has no shared folder: `stage_lock` returns None and the caller uses the
store itself (see `tracking.run_stage`).

The kernel drops a flock when its process dies, `kill -9` included: no stale locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

_held: set[str] = set()  # lock files this process holds: taking one again is a no-op


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).resolve()


def lock_dir(uri: str) -> Path | None:
    """Where the lock files of a local store go; None for a server (or remote) store."""
    db = sqlite_file(uri)
    if db is not None:
        return db.parent / ".hyrax-locks"
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):  # a FileStore folder (./mlruns): next to it, not in it
        return Path(unquote(parsed.path)).resolve().parent / ".hyrax-locks"
    return None


def holder(path: Path) -> str:
    """'PID on HOST' of whoever last held the lock file (best effort)."""
    try:
        pid, host = path.read_text().split()[:2]
        return f"process {pid} on {host}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """An exclusive flock on `path`; `on_wait(holder)` is called once if it must wait."""
    key = str(path)
    if key in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(holder(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def schema_lock(uri: str):
    """Serialises the first use of a SQLite store (its schema set-up); a no-op elsewhere."""
    db = sqlite_file(uri)
    if db is None:
        return contextlib.nullcontext()
    return file_lock(db.with_name(db.name + ".lock"))


def stage_lock(uri: str, identity: dict[str, str],
               on_wait: Callable[[str], None] | None = None):
    """The lock of one stage identity in a local store, or None for a server store."""
    root = lock_dir(uri)
    if root is None:
        return None
    text = "\n".join(f"{k}={v}" for k, v in sorted(identity.items()))
    return file_lock(root / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.lock", on_wait)
