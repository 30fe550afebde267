"""The download engine every survey source shares: parallel HTTP requests, retries with
exponential backoff and jitter (connection errors, timeouts, 5xx, 429 honouring Retry-After),
validation of every response before it counts, and a journal so a killed run resumes with
only what is missing. A request that keeps failing is recorded, never fatal.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from hyrax_mlops.download.journal import Journal

RETRY_STATUS = {429, 500, 502, 503, 504}


class InvalidResponse(Exception):
    """The server answered, but not with what was asked for (truncated, corrupt, wrong shape).
    Retried like a network error, then recorded."""


class PermanentError(Exception):
    """No retry can help (e.g. 401/403/404): recorded at once, with the reason."""


@dataclass
class Request:
    key: str  # what the journal calls it: an object id, or a batch id
    url: str
    method: str = "GET"
    data: Any = None
    files: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    timeout_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full-jitter exponential backoff; a server's Retry-After is a floor."""
        backoff = random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))
        return max(backoff, retry_after or 0.0)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


@dataclass
class Stats:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)


def _fetch(session, req: Request, policy: RetryPolicy, stats: Stats, lock: threading.Lock,
           accept: Callable[[Request, bytes], Any]) -> tuple[Any, int]:
    import requests

    last = ""
    for attempt in range(policy.attempts):
        retry_after = None
        try:
            resp = session.request(req.method, req.url, data=req.data, files=req.files,
                                   params=req.params, headers=req.headers,
                                   timeout=policy.timeout_s)
            if resp.status_code in (401, 403):
                raise PermanentError(f"HTTP {resp.status_code}: the service refused the "
                                     "credentials (check the token/password in the environment)")
            if resp.status_code == 404:
                raise PermanentError("HTTP 404: not found")
            if resp.status_code in RETRY_STATUS:
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                raise InvalidResponse(f"HTTP {resp.status_code}")
            resp.raise_for_status()
            body = resp.content
            expected = resp.headers.get("Content-Length")
            if expected is not None and int(expected) != len(body):
                raise InvalidResponse(f"truncated body: {len(body)} of {expected} bytes")
            return accept(req, body), attempt + 1
        except PermanentError:
            raise
        except (requests.RequestException, InvalidResponse, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"[:300]
        if attempt + 1 < policy.attempts:
            with lock:
                stats.retries += 1
            time.sleep(policy.delay(attempt, retry_after))
    raise InvalidResponse(f"gave up after {policy.attempts} attempts: {last}")


def fetch_all(requests_: Iterable[Request], accept: Callable[[Request, bytes], Any],
              journal: Journal, *, concurrency: int = 4, policy: RetryPolicy | None = None,
              session=None, progress: Callable[[Stats], None] | None = None,
              total: int | None = None) -> Stats:
    """Fetch every request not already done in `journal`, `concurrency` at a time.

    `accept(req, body)` validates and stores a response (raise `InvalidResponse` to retry);
    what it returns is recorded in the journal. Returns the counts.
    """
    import requests
    from tqdm.auto import tqdm

    policy = policy or RetryPolicy()
    session = session or requests.Session()
    stats, lock = Stats(), threading.Lock()
    todo = []
    for req in requests_:
        if req.key in journal.done:
            stats.skipped += 1
        else:
            todo.append(req)
    bar = tqdm(total=len(todo) if total is None else total - stats.skipped, desc="download",
               unit="req")
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(_fetch, session, r, policy, stats, lock, accept): r for r in todo}
        for fut in as_completed(futures):
            req = futures[fut]
            try:
                info, attempts = fut.result()
                journal.record(req.key, "done", attempts=attempts,
                               **(info if isinstance(info, dict) else {}))
                with lock:
                    stats.done += 1
            except (InvalidResponse, PermanentError) as exc:
                journal.record(req.key, "failed", reason=type(exc).__name__,
                               detail=str(exc)[:500])
                with lock:
                    stats.failed += 1
            bar.update(1)
            bar.set_postfix(failed=stats.failed, retries=stats.retries)
            if progress:
                progress(stats)
    bar.close()
    return stats
