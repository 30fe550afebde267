"""An append-only record of what a download has finished, safe against `kill -9`.

One JSON object per line, flushed and fsynced as each item ends: a run killed at any moment
leaves at worst one torn last line, which is ignored on reading. Resuming reads it back and
skips every key already done; failures are retried on resume (they may have been transient).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path | None) -> None:
        """`path=None`: kept in memory only (streaming, where the cache is the record)."""
        self.path = None if path is None else Path(path)
        self.done: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._fh = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill: that item is redone
                    continue
                self._remember(entry)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _remember(self, entry: dict[str, Any]) -> None:
        key = entry["key"]
        if entry["status"] == "done":
            self.done[key] = entry
            self.failed.pop(key, None)
        else:
            self.failed[key] = entry

    def record(self, key: str, status: str, **info: Any) -> None:
        """Write one finished item (status "done" or "failed") durably."""
        self.record_many([{"key": key, "status": status, **info}])

    def record_many(self, entries: list[dict[str, Any]]) -> None:
        """Write the items one answer finished (each with "key" and "status"), then sync once:
        an HSC list of 990 rectangles costs one fsync, not 990."""
        with self._lock:
            if self._fh is not None:
                self._fh.write("".join(json.dumps(e, default=str) + "\n" for e in entries))
                self._fh.flush()
                os.fsync(self._fh.fileno())
            for entry in entries:
                self._remember(entry)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
