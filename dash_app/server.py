"""Serve the app: on 127.0.0.1 by default; any other address requires a token.

The token comes from `--token-file` or the environment (HYRAX_APP_TOKEN), never from the
command line or logs. A browser passes it once as `?token=...` (kept in an HttpOnly cookie);
scripts send `Authorization: Bearer ...`.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from hyrax_mlops.errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COOKIE = "hyrax_app_token"


def read_token(token_file: str | None) -> str | None:
    if token_file:
        return Path(token_file).read_text().strip() or None
    return os.environ.get("HYRAX_APP_TOKEN") or None


def protect(server, token: str) -> None:
    """Refuse every request without the token (header, cookie, or ?token= once)."""
    from flask import make_response, redirect, request

    def ok(value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), token.encode())

    @server.before_request
    def check():
        auth = request.headers.get("Authorization", "")
        if ok(auth.removeprefix("Bearer ").strip()) or ok(request.cookies.get(COOKIE)):
            return None
        if ok(request.args.get("token")):
            resp = redirect(request.path)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return resp
        return make_response("hyrax-mlops app: a token is required "
                             "(Authorization: Bearer <token>, or open ?token=<token>)", 401)


def serve(host: str = "127.0.0.1", port: int = 8050, token_file: str | None = None,
          cfg=None, debug: bool = False) -> None:
    from dash_app.app import create_app

    token = read_token(token_file)
    if host not in LOOPBACK and not token:
        raise ConfigError(f"binding the app to {host} exposes it beyond this machine: set "
                          "HYRAX_APP_TOKEN or pass --token-file FILE (see README).")
    app = create_app(cfg)
    if token:
        protect(app.server, token)
    print(f"hyrax-mlops app on http://{host}:{port}/" + (" (token required)" if token else ""),
          flush=True)
    app.run(host=host, port=port, debug=debug)
