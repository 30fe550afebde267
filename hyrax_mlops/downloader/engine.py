"""The download engine every survey source shares: parallel HTTP requests, retries with
exponential backoff and jitter (connection errors, timeouts, 5xx, 429 honouring Retry-After),
validation of every response before it counts, and a journal so a killed run resumes with
only what is missing. A request that keeps failing is recorded, never fatal.

A request covers one or more *items* (a cutout, or the ~990 rectangles of one HSC list);
the journal records items, so a resume asks again only for what is not yet done. A request
waiting out its backoff does not hold a connection: the slot serves other requests meanwhile.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse

from hyrax_mlops.downloader.journal import Journal
from hyrax_mlops.errors import HyraxError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class InvalidResponse(Exception):
    """The server answered, but not with what was asked for (truncated, corrupt, wrong shape).
    Retried like a network error, then recorded."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """No retry can help (e.g. 400/401/403/404): recorded at once, with the reason."""

    def __init__(self, message: str, reason: str = "PermanentError") -> None:
        super().__init__(message)
        self.reason = reason


class AuthRefused(PermanentError, HyraxError):
    """The service refused the credentials (401/403): every other request would be refused
    too, so the download stops at once; what was fetched stays journaled for a resume."""


@dataclass
class Request:
    key: str  # names the request in messages; `items` are what the journal records
    url: str
    method: str = "GET"
    data: Any = None
    files: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    context: Any = None  # whatever the source needs to read the answer (e.g. the list sent)

    def __post_init__(self) -> None:
        if not self.items:
            self.items = [self.key]


@dataclass
class Outcome:
    """What `accept` returns for a request of several items: some may be done, some failed for
    good (e.g. the service has no image there), each with its own reason."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # item -> (reason, detail)


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
    total: int = 0  # items this call has to fetch (not counting those already done)
    done: int = 0
    failed: int = 0
    skipped: int = 0  # items already done in the journal
    retries: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def rate(self) -> float:
        """Items finished (done or failed) per second."""
        return (self.done + self.failed) / self.elapsed()

    def eta(self) -> float:
        left = self.total - self.done - self.failed
        rate = self.rate()
        return left / rate if rate > 0 else float("inf")


def _explain_status(resp) -> str:
    text = ""
    if "text" in resp.headers.get("Content-Type", "") or not resp.headers.get("Content-Type"):
        text = resp.text.strip().replace("\n", " ")[:200]
    return f"HTTP {resp.status_code}" + (f": {text}" if text else "")


def _attempt(session_for: Callable[[], Any], req: Request, policy: RetryPolicy,
             accept: Callable[[Request, bytes], Any]) -> Any:
    """One try of one request: the accepted result, or an exception saying what went wrong."""
    session = session_for()
    resp = session.request(req.method, req.url, data=req.data, files=req.files,
                           params=req.params, headers=req.headers, timeout=policy.timeout_s)
    if resp.status_code in (401, 403):
        raise AuthRefused(f"HTTP {resp.status_code} from {urlparse(req.url).netloc}: the "
                          "service refused the credentials (check the user/password or token "
                          "given in the environment, netrc or credentials file)")
    if resp.status_code in (400, 404, 410, 413, 422):
        raise PermanentError(_explain_status(resp))
    if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
        raise InvalidResponse(f"HTTP {resp.status_code}",
                              retry_after_seconds(resp.headers.get("Retry-After")))
    resp.raise_for_status()
    body = resp.content
    expected = resp.headers.get("Content-Length")
    if expected is not None and int(expected) != len(body):
        raise InvalidResponse(f"truncated body: {len(body)} of {expected} bytes")
    return accept(req, body)


def _session_factory(concurrency: int, prepare: Callable[[Any], None] | None
                     ) -> Callable[[], Any]:
    """One `requests.Session` per worker thread (a session is not thread-safe), set up by
    `prepare` (credentials) when it is made."""
    import requests
    from requests.adapters import HTTPAdapter

    local = threading.local()

    def get():
        if not hasattr(local, "session"):
            s = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(4, concurrency))
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            if prepare is not None:
                prepare(s)
            local.session = s
        return local.session

    return get


def fetch_all(requests_: Iterable[Request], accept: Callable[[Request, bytes], Any],
              journal: Journal, *, concurrency: int = 4, policy: RetryPolicy | None = None,
              prepare: Callable[[Any], None] | None = None,
              progress: Callable[[Stats], None] | None = None, desc: str = "download",
              unit: str = "cutout", show_progress: bool = True) -> Stats:
    """Fetch every request with an item not yet done in `journal`, `concurrency` at a time.

    `accept(req, body)` validates and stores a response (raise `InvalidResponse` to retry);
    it returns an info dict for all the request's items, or an `Outcome` item by item.
    `prepare(session)` sets up each worker's session (credentials). Returns the counts.
    """
    import requests

    from hyrax_mlops.progress import tqdm

    policy = policy or RetryPolicy()
    stats = Stats()
    todo: list[Request] = []
    for req in requests_:
        missing = [i for i in req.items if i not in journal.done]
        stats.skipped += len(req.items) - len(missing)
        if missing:
            req.items = missing
            todo.append(req)
    stats.total = sum(len(r.items) for r in todo)
    make_session = _session_factory(concurrency, prepare)

    bar = tqdm(total=stats.total, desc=desc, unit=unit, smoothing=0.05,
               disable=not show_progress)
    ready = [(r, 0) for r in reversed(todo)]  # (request, attempt); popped from the end
    waiting: list[tuple[float, int, Request, int]] = []  # (when, seq, request, attempt)
    seq = itertools.count()
    inflight: dict[Any, tuple[Request, int]] = {}

    def finish(req: Request, result: Any, attempts: int) -> None:
        outcome = result if isinstance(result, Outcome) else Outcome(
            done={i: dict(result or {}) for i in req.items})
        entries = []
        for item in req.items:
            if item in outcome.done:
                entries.append({"key": item, "status": "done", "attempts": attempts,
                                **outcome.done[item]})
            else:
                reason, detail = outcome.failed.get(item, ("missing", "not in the answer"))
                entries.append({"key": item, "status": "failed", "reason": reason,
                                "detail": detail[:500]})
        journal.record_many(entries)
        stats.done += sum(e["status"] == "done" for e in entries)
        stats.failed += sum(e["status"] == "failed" for e in entries)
        bar.update(len(req.items))

    def give_up(req: Request, reason: str, detail: str) -> None:
        journal.record_many([{"key": item, "status": "failed", "reason": reason,
                              "detail": detail[:500]} for item in req.items])
        stats.failed += len(req.items)
        bar.update(len(req.items))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while ready or waiting or inflight:
            now = time.monotonic()
            while waiting and waiting[0][0] <= now:
                _, _, req, attempt = heapq.heappop(waiting)
                ready.append((req, attempt))  # retries go first: they are the oldest work
            while ready and len(inflight) < concurrency:
                req, attempt = ready.pop()
                fut = pool.submit(_attempt, make_session, req, policy, accept)
                inflight[fut] = (req, attempt)
                stats.requests += 1
            timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else None
            if not inflight:
                time.sleep(timeout or 0)
                continue
            finished, _ = wait(list(inflight), timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in finished:
                req, attempt = inflight.pop(fut)
                try:
                    finish(req, fut.result(), attempt + 1)
                except AuthRefused:
                    for other in inflight:
                        other.cancel()
                    bar.close()
                    raise
                except PermanentError as exc:
                    give_up(req, exc.reason, str(exc))
                except (requests.RequestException, InvalidResponse, OSError) as exc:
                    detail = f"{type(exc).__name__}: {exc}"[:300]
                    if attempt + 1 >= policy.attempts:
                        give_up(req, "InvalidResponse",
                                f"gave up after {policy.attempts} attempts: {detail}")
                    else:
                        stats.retries += 1
                        delay = policy.delay(attempt, getattr(exc, "retry_after", None))
                        heapq.heappush(waiting, (time.monotonic() + delay, next(seq), req,
                                                 attempt + 1))
            bar.set_postfix(failed=stats.failed, retries=stats.retries, refresh=False)
            if progress and finished:
                progress(stats)
    bar.close()
    if progress:
        progress(stats)
    return stats
