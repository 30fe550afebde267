"""Serve the app: on 127.0.0.1 by default; any other address requires a token.

The token comes from `--token-file` or the environment (HYRAX_APP_TOKEN), never from the
command line or logs. A browser passes it once as `?token=...`: the app answers with an
HttpOnly cookie and a redirect to the same URL without the token, so it stays out of the
address bar, the history and every log. Scripts send `Authorization: Bearer ...`.

Beyond loopback (or with HYRAX_APP_SERVER=waitress) the app is served by waitress, a
production WSGI server, not the Werkzeug development server. Behind a TLS-terminating reverse
proxy set HYRAX_APP_TRUST_PROXY=1: its `X-Forwarded-Proto: https` (and -For, -Host) are then
believed, and the cookie is marked `Secure`. Without it, only a request that really came over
https gets a `Secure` cookie: a header anyone can send is not trusted by default.
No request line is logged by either server (a `?token=` would be in it); any log line that
still mentions one is masked.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from hyrax_mlops.errors import ConfigError
from hyrax_mlops.redact import redact

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COOKIE = "hyrax_app_token"
ENV_TOKEN = "HYRAX_APP_TOKEN"
ENV_SERVER = "HYRAX_APP_SERVER"  # "waitress" forces the production server, even on loopback
ENV_TRUST_PROXY = "HYRAX_APP_TRUST_PROXY"  # "1": believe X-Forwarded-Proto/-For/-Host
_TRUE = {"1", "true", "yes", "on"}


def _token_file_error(path: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"--token-file {path}: {problem}. Fix: put the access token alone on one line of a "
        f"file only you can read (e.g. `python -c \"import secrets; "
        f"print(secrets.token_urlsafe(32))\" > {path} && chmod 600 {path}`), or set "
        f"{ENV_TOKEN} instead.")


def read_token(token_file: str | None) -> str | None:
    """The access token from `token_file`, else `$HYRAX_APP_TOKEN`, else None. A token file
    that is missing, empty, unreadable or not one line of text is a ConfigError (the message
    never quotes what the file holds)."""
    if token_file is not None and str(token_file).strip():
        path = Path(token_file).expanduser()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise _token_file_error(path, "no such file") from None
        except IsADirectoryError:
            raise _token_file_error(path, "is a directory, not a file") from None
        except PermissionError:
            raise _token_file_error(path, "cannot be read (permission denied)") from None
        except OSError as exc:
            raise _token_file_error(path, f"cannot be read ({exc.strerror or 'error'})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _token_file_error(path, "is not text (binary content)") from None
        token = text.strip()
        if not token:
            raise _token_file_error(path, "is empty")
        if any(c.isspace() or not c.isprintable() for c in token):
            raise _token_file_error(path, "holds more than one word, or control characters")
        return token
    return os.environ.get(ENV_TOKEN, "").strip() or None


class _Redacting(logging.Filter):
    """Masks tokens and credentials in a log record before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is dropped rather than risk its content
            return False
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def quiet_logs() -> None:
    """No request lines (Werkzeug logs every URL, `?token=` included) and no development-
    server banner; what the servers still log passes through `redact`."""
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.ERROR)
    for name in ("werkzeug", "waitress", "dash", "dash.dash"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _Redacting) for f in log.filters):
            log.addFilter(_Redacting())


def _https(request, trust_proxy: bool) -> bool:
    if request.is_secure:  # with ProxyFix installed this already follows X-Forwarded-Proto
        return True
    if trust_proxy:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def protect(server, token: str, *, trust_proxy: bool = False) -> None:
    """Refuse every request without the token (header, cookie, or ?token= once)."""
    from urllib.parse import urlencode

    from flask import make_response, redirect, request

    def ok(value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), token.encode())

    @server.before_request
    def check():
        auth = request.headers.get("Authorization", "")
        if ok(auth.removeprefix("Bearer ").strip()) or ok(request.cookies.get(COOKIE)):
            return None
        if ok(request.args.get("token")):
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            resp = redirect(request.path + (f"?{urlencode(rest)}" if rest else ""))
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict",
                            secure=_https(request, trust_proxy))
            resp.headers["Referrer-Policy"] = "no-referrer"
            resp.headers["Cache-Control"] = "no-store"
            return resp
        return make_response("hyrax-mlops app: a token is required "
                             "(Authorization: Bearer <token>, or open ?token=<token>)", 401)


def production_wanted(host: str, production: bool | None = None) -> bool:
    """Waitress beyond loopback, or when asked (`production` / HYRAX_APP_SERVER=waitress)."""
    if production is None:
        production = os.environ.get(ENV_SERVER, "").strip().lower() == "waitress"
    return production or host not in LOOPBACK


def build(host: str = "127.0.0.1", token_file: str | None = None, cfg=None, *,
          trust_proxy: bool | None = None, app=None, prefix: str | None = None):
    """Check everything, then make the app (token gate, proxy handling): nothing listens yet.
    Returns (dash app, token or None, trust_proxy)."""
    token = read_token(token_file)
    if host not in LOOPBACK and not token:
        raise ConfigError(f"binding the app to {host} exposes it beyond this machine: set "
                          f"{ENV_TOKEN} or pass --token-file FILE (see README).")
    if trust_proxy is None:
        trust_proxy = os.environ.get(ENV_TRUST_PROXY, "").strip().lower() in _TRUE
    if app is None:
        from dash_app.app import create_app

        app = create_app(cfg, prefix=prefix)
    if trust_proxy:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.server.wsgi_app = ProxyFix(app.server.wsgi_app, x_for=1, x_proto=1, x_host=1)
    if token:
        protect(app.server, token, trust_proxy=trust_proxy)
    return app, token, trust_proxy


def serve(host: str = "127.0.0.1", port: int = 8050, token_file: str | None = None,
          cfg=None, debug: bool = False, *, production: bool | None = None,
          trust_proxy: bool | None = None, prefix: str | None = None) -> None:
    quiet_logs()
    waitress_wanted = production_wanted(host, production)
    if debug and waitress_wanted:
        raise ConfigError("debug mode runs the Werkzeug debugger (it executes code sent to "
                          "it): only on 127.0.0.1. Fix: drop debug, or bind to 127.0.0.1.")
    if waitress_wanted:
        try:
            import waitress
        except ImportError:
            raise ConfigError("serving beyond 127.0.0.1 needs waitress (never the development "
                              "server). Fix: pip install 'hyrax-mlops[app]'") from None
    app, token, trust_proxy = build(host, token_file, cfg, trust_proxy=trust_proxy,
                                    prefix=prefix)
    how = "waitress" + (", trusting X-Forwarded-Proto" if trust_proxy else "") \
        if waitress_wanted else "loopback only"
    path = app.config.requests_pathname_prefix or "/"
    print(f"hyrax-mlops app on http://{host}:{port}{path} ({how})"
          + (" (token required)" if token else ""), flush=True)
    if waitress_wanted:
        # X-Forwarded-* are dropped by waitress unless the proxy is trusted (then ProxyFix,
        # installed by `build`, reads them)
        waitress.serve(app.server, host=host, port=port, threads=8,
                       clear_untrusted_proxy_headers=not trust_proxy, _quiet=True)
        return
    import flask.cli

    flask.cli.show_server_banner = lambda *a, **k: None  # no red "development server" noise
    app.run(host=host, port=port, debug=debug)
