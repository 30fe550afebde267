"""How the app is served: the `?token=` login never reaches a log, the browser is sent on
without it, the cookie is HttpOnly (and Secure over https), and beyond loopback the app runs
on waitress, never the Werkzeug development server. Real `hyrax-mlops app` processes on
127.0.0.1, stopped by their PID; the production path is forced with HYRAX_APP_SERVER so
nothing is ever exposed beyond loopback."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import _wait_port, free_port, stop

TOKEN = "app-tok-Qm8vX2-s3cret-42"


@contextlib.contextmanager
def app_process(workdir: Path, env: dict, args: tuple = ()):
    """`hyrax-mlops app` on a loopback port with its stdout and stderr in a file; yields
    (port, log path, process)."""
    port = free_port()
    log = workdir / f"app-{port}.log"
    full = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", **env)
    exe = Path(sys.executable).parent / "hyrax-mlops"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "app", "--host", "127.0.0.1", "--port", str(port),
                                 *args], cwd=workdir, env=full, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait_port("127.0.0.1", port, proc, timeout=90)
        yield port, log, proc
    finally:
        stop(proc)


def get(port: int, path: str, headers: dict | None = None):
    """One request, redirects not followed: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _login_and_use(port: int, headers: dict | None = None):
    status, head, _ = get(port, f"/?token={TOKEN}&tab=explorer", headers)
    assert status == 302
    location = head["Location"]
    assert TOKEN not in location and "token" not in location
    assert location.endswith("/?tab=explorer")  # the same URL, without the token
    cookie = head["Set-Cookie"]
    assert "hyrax_app_token=" in cookie and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert head["Referrer-Policy"] == "no-referrer"
    status, _, body = get(port, "/", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"hyrax-mlops" in body
    assert get(port, "/?token=wrong-token")[0] == 401
    return head


def test_production_server_is_waitress_logs_no_token_and_secures_the_cookie(tmp_path):
    env = {"HYRAX_APP_TOKEN": TOKEN, "HYRAX_APP_SERVER": "waitress",
           "HYRAX_APP_TRUST_PROXY": "1"}
    started = time.monotonic()
    with app_process(tmp_path, env) as (port, log, _):
        head = _login_and_use(port, {"X-Forwarded-Proto": "https"})
        assert head["Server"] == "waitress"
        assert "Secure" in head["Set-Cookie"]
        # the same proxy forwarding plain http: no Secure flag (the browser would drop it)
        status, plain, _ = get(port, f"/?token={TOKEN}", {"X-Forwarded-Proto": "http"})
        assert status == 302 and "Secure" not in plain["Set-Cookie"]
        time.sleep(0.5)
    text = log.read_text()
    assert TOKEN not in text
    assert "(waitress" in text and "This is a development server" not in text
    assert "GET /" not in text  # no request log at all
    assert time.monotonic() - started < 120


def test_an_untrusted_forwarded_proto_does_not_make_the_cookie_secure(tmp_path):
    """Without HYRAX_APP_TRUST_PROXY, anyone could send X-Forwarded-Proto: it is ignored."""
    with app_process(tmp_path, {"HYRAX_APP_TOKEN": TOKEN,
                                "HYRAX_APP_SERVER": "waitress"}) as (port, log, _):
        head = _login_and_use(port, {"X-Forwarded-Proto": "https"})
        assert head["Server"] == "waitress" and "Secure" not in head["Set-Cookie"]
    assert TOKEN not in log.read_text()


def test_loopback_dev_server_logs_no_request_lines_and_no_token(tmp_path):
    with app_process(tmp_path, {"HYRAX_APP_TOKEN": TOKEN}) as (port, log, _):
        head = _login_and_use(port)
        assert "waitress" not in head.get("Server", "")
        assert "Secure" not in head["Set-Cookie"]  # plain http on loopback
        time.sleep(0.5)
    text = log.read_text()
    assert TOKEN not in text and "token=" not in text
    assert "GET /" not in text and "This is a development server" not in text
    assert "127.0.0.1" in text  # it still says where it listens


def test_serve_beyond_loopback_chooses_waitress_and_never_debug(monkeypatch):
    """The decision only: nothing is bound here."""
    from dash_app import server
    from hyrax_mlops.errors import ConfigError

    monkeypatch.delenv("HYRAX_APP_SERVER", raising=False)
    assert server.production_wanted("0.0.0.0") and server.production_wanted("10.1.2.3")
    assert not server.production_wanted("127.0.0.1")
    assert server.production_wanted("127.0.0.1", production=True)
    monkeypatch.setenv("HYRAX_APP_SERVER", "waitress")
    assert server.production_wanted("127.0.0.1")
    monkeypatch.setenv("HYRAX_APP_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="debug mode"):
        server.serve("0.0.0.0", 1, debug=True)
    monkeypatch.delenv("HYRAX_APP_TOKEN")
    with pytest.raises(ConfigError, match="exposes it beyond this machine"):
        server.serve("0.0.0.0", 1)
