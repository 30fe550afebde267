"""The shared download engine against a local server that fails on purpose: every object ends
fetched or listed as failed with its reason, and a resumed run fetches only what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultServer, is_fits_stamp

from hyrax_mlops.downloader.engine import (
    AuthRefused,
    InvalidResponse,
    Request,
    RetryPolicy,
    fetch_all,
    retry_after_seconds,
)
from hyrax_mlops.downloader.journal import Journal

FAST = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, timeout_s=5)


def accept_fits(req: Request, body: bytes) -> dict:
    try:
        shape = is_fits_stamp(body)
    except Exception as exc:
        raise InvalidResponse(f"not a FITS image: {exc}") from None
    return {"shape": list(shape), "bytes": len(body)}


def test_every_fault_is_retried_and_a_hopeless_object_is_recorded(tmp_path):
    plan = {"A": ["500", "500"], "B": ["429"], "C": ["reset"], "D": ["truncated"],
            "E": ["corrupt", "corrupt"], "F": ["slow"], "G": ["always500"]}
    keys = [*plan, "H", "I"]
    with FaultServer(plan) as server, Journal(tmp_path / "journal.jsonl") as journal:
        stats = fetch_all([Request(k, f"{server.url}/cutout?id={k}") for k in keys],
                          accept_fits, journal, concurrency=3, policy=FAST)
        assert stats.done == 8 and stats.failed == 1 and stats.retries >= 7
        assert set(journal.done) == set(keys) - {"G"}
        assert journal.failed["G"]["reason"] == "InvalidResponse"
        assert "HTTP 500" in journal.failed["G"]["detail"] and "4 attempts" in journal.failed[
            "G"]["detail"]
        assert journal.done["E"]["attempts"] == 3  # two corrupt answers, then a good one
        assert journal.done["E"]["shape"] == [3, 64, 64]
        assert all(server.served[k] == 1 for k in journal.done)  # one good answer each
        assert server.requests["G"] == 4


def test_refused_credentials_are_not_retried_and_say_so(tmp_path):
    import http.server
    import threading

    class Deny(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Journal(tmp_path / "j.jsonl") as journal:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/x"
            with pytest.raises(AuthRefused, match="refused the credentials"):
                fetch_all([Request(k, url) for k in "XYZ"], accept_fits, journal, policy=FAST,
                          concurrency=1)
            assert not journal.done  # stopped at the first refusal: nothing half-recorded
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_retry_after_is_read_as_seconds_or_a_date():
    from email.utils import formatdate

    assert retry_after_seconds("2.5") == 2.5
    assert 8 <= retry_after_seconds(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert FAST.delay(0, retry_after=1.0) >= 1.0


def test_a_journal_ignores_a_line_torn_by_a_kill(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "A", "status": "done"}\n{"key": "B", "sta')
    journal = Journal(path)
    assert set(journal.done) == {"A"}
    journal.close()


WORKER = """
import sys
sys.path.insert(0, {tests!r})
from fault_server import is_fits_stamp
from hyrax_mlops.downloader.engine import Request, RetryPolicy, fetch_all
from hyrax_mlops.downloader.journal import Journal
url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Journal(path) as journal:
    fetch_all([Request(f"K{{i:04d}}", f"{{url}}/cutout?id=K{{i:04d}}") for i in range(n)],
              lambda r, b: {{"shape": list(is_fits_stamp(b))}}, journal, concurrency=2,
              policy=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, timeout_s=5))
"""


def test_a_run_killed_with_sigkill_resumes_fetching_only_what_is_missing(tmp_path):
    n = 120
    plan = {f"K{i:04d}": ["slow"] for i in range(n)}  # slow enough to be killed mid-way
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    journal_path = tmp_path / "journal.jsonl"
    with FaultServer(plan, slow_s=0.05) as server:
        proc = subprocess.Popen([sys.executable, str(script), server.url, str(journal_path),
                                 str(n)], env=dict(os.environ), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = journal_path.read_text().splitlines() if journal_path.exists() else []
            if len(lines) >= 30:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done_before = set(Journal(journal_path).done)
        assert 30 <= len(done_before) < n, "the worker finished before it could be killed"
        seen_before = len(server.log)
        done = subprocess.run([sys.executable, str(script), server.url, str(journal_path),
                               str(n)], env=dict(os.environ), capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        after = server.log[seen_before:]
        assert not set(after) & done_before  # nothing already journaled is fetched again
        final = Journal(journal_path)
        assert set(final.done) == {f"K{i:04d}" for i in range(n)} and not final.failed
        entries = [json.loads(x) for x in journal_path.read_text().splitlines() if x.strip()
                   and x.strip().endswith("}")]
        assert len({e["key"] for e in entries}) == n


@pytest.mark.parametrize("concurrency", [1, 8])
def test_concurrency_does_not_change_the_outcome(tmp_path, concurrency):
    plan = {f"K{i}": ["500"] if i % 3 == 0 else ["reset"] if i % 5 == 0 else []
            for i in range(40)}
    with FaultServer(plan) as server, Journal(tmp_path / "j.jsonl") as journal:
        stats = fetch_all([Request(k, f"{server.url}/cutout?id={k}") for k in plan],
                          accept_fits, journal, concurrency=concurrency, policy=FAST)
    assert stats.done == 40 and stats.failed == 0
