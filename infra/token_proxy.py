#!/usr/bin/env python3
"""A bearer-token gate in front of a Chroma server: a small threaded HTTP reverse proxy.

Why this exists: the server that `chroma run` starts in chromadb 1.5.x is the Rust frontend,
whose authentication hook is a no-op. The token settings of the old Python server
(`CHROMA_SERVER_AUTHN_PROVIDER=chromadb.auth.token_authn.TokenAuthenticationServerProvider`,
`CHROMA_SERVER_AUTHN_CREDENTIALS`, ...) are accepted and silently ignored: checked on this
machine with chromadb 1.5.9, an unauthenticated request still gets 200. So Chroma is bound to a
loopback port nobody else is told about, and this proxy is the only published endpoint.

Every request must carry the token as `Authorization: Bearer <token>` or
`X-Chroma-Token: <token>` (what chromadb's `TokenAuthClientProvider` sends); anything else gets
401. The comparison is constant-time (both sides are hashed to a fixed length first). Allowed
requests are forwarded with their method, path, query, headers (less the hop-by-hop ones and
the token itself) and body; answers are streamed back, request bodies over 8 MiB streamed on
(smaller ones are read whole first); one upstream connection per request, TCP_NODELAY on both.

The token is read once, at start, from the file given by `--token-file` (keep it mode 600);
it never appears on a command line.

    python infra/token_proxy.py --listen-port 8001 --upstream http://127.0.0.1:8000 \\
        --token-file ~/.config/hyrax/chroma.token
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones this proxy handles itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "expect", "host", "content-length",
})
TOKEN_HEADERS = frozenset({"authorization", "x-chroma-token"})
CHUNK = 64 * 1024
BUFFERED_BODY = 8 * 1024 * 1024  # request bodies up to this size are read whole, then sent


def read_token(path: str | os.PathLike[str]) -> bytes:
    """The token in `path` (surrounding whitespace dropped); refuses an empty one."""
    p = Path(path)
    token = p.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {p} is empty")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"token_proxy: warning: {p} is readable by others (chmod 600 it)", file=sys.stderr)
    return token.encode("utf-8")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class _Limited:
    """A file-like view of the next `n` bytes of a stream (a request body of known length)."""

    def __init__(self, stream, n: int) -> None:
        self._stream, self._left = stream, n

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        if not data:
            self._left = 0
        return data


def _dechunk(stream) -> Iterator[bytes]:
    """The data of a chunked request body, piece by piece (trailers are dropped)."""
    while True:
        line = stream.readline(65537)
        if not line:
            return
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return
        data = stream.read(size)
        stream.readline(65537)  # the CRLF after the chunk
        if data:
            yield data


class TokenProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hyrax-token-proxy"
    timeout = 600  # seconds a client connection may sit idle

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- auth ---------------------------------------------------------------------------
    def _authorized(self) -> bool:
        want = self.server.token_digest  # type: ignore[attr-defined]
        offered: list[str] = []
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        if self.headers.get("X-Chroma-Token") is not None:
            offered.append(self.headers["X-Chroma-Token"].strip())
        ok = False
        for candidate in offered:  # compare every candidate: no early exit on a match
            ok |= hmac.compare_digest(_digest(candidate.encode("utf-8")), want)
        return ok

    def _reply(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": http.client.responses.get(status, "Error"),
                           "message": message}).encode()
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self) -> None:
        """Read and drop a rejected request's body so the connection stays usable."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            for _ in _dechunk(self.rfile):
                pass
            return
        reader = _Limited(self.rfile, int(self.headers.get("Content-Length") or 0))
        while reader.read(CHUNK):
            pass

    # -- forwarding ---------------------------------------------------------------------
    def _forward(self) -> None:
        if not self._authorized():
            self._drain_body()
            self._reply(401, "missing or invalid token: send 'Authorization: Bearer <token>' "
                        "or 'X-Chroma-Token: <token>'", {"WWW-Authenticate": "Bearer"})
            return

        named_in_connection = {
            h.strip().lower() for h in (self.headers.get("Connection") or "").split(",")
        }
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in TOKEN_HEADERS or lk in named_in_connection:
                continue
            headers[k] = v
        up = self.server.upstream  # type: ignore[attr-defined]
        headers["Host"] = up.netloc
        forwarded = self.headers.get("X-Forwarded-For")
        client = self.client_address[0]
        headers["X-Forwarded-For"] = f"{forwarded}, {client}" if forwarded else client

        body = None
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = _dechunk(self.rfile)  # http.client re-chunks an iterable body
        elif self.headers.get("Content-Length") is not None:
            length = int(self.headers["Content-Length"])
            headers["Content-Length"] = str(length)
            # small bodies whole (one write with the headers), large ones streamed
            body = (self.rfile.read(length) if length <= BUFFERED_BODY
                    else _Limited(self.rfile, length))

        timeout = self.server.upstream_timeout  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=timeout)
        try:
            try:
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
            except OSError as e:
                self.close_connection = True
                self._reply(502, f"upstream unavailable: {e.__class__.__name__}")
                return
            self._relay(resp)
        finally:
            conn.close()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response_only(resp.status, resp.reason)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = resp.getheader("Content-Length")
        named_in_connection = {
            h.strip().lower() for h in (resp.getheader("Connection") or "").split(",")
        }
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in HOP_BY_HOP and lk != "content-length" or lk in named_in_connection:
                continue
            if lk == "content-length" and no_body and self.command != "HEAD":
                continue
            self.send_header(k, v)
        chunked = False
        if not no_body and length is None:
            if self.request_version == "HTTP/1.1":
                chunked = True
                self.send_header("Transfer-Encoding", "chunked")
            else:  # an HTTP/1.0 client: the end of the body is the end of the connection
                self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.log_request(resp.status)
        if no_body:
            return
        while True:
            piece = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
            if not piece:
                break
            if chunked:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                self.wfile.write(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} "
                         f"{format % args}\n")


class TokenProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], upstream: str, token: bytes,
                 upstream_timeout: float = 600.0) -> None:
        self.upstream = urlsplit(upstream)
        if self.upstream.scheme != "http" or not self.upstream.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.token_digest = _digest(token)
        self.upstream_timeout = upstream_timeout
        super().__init__(listen, TokenProxyHandler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen-host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; put TLS in front for others)")
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="the Chroma server, http://127.0.0.1:PORT")
    ap.add_argument("--token-file", required=True, help="file holding the token (mode 600)")
    args = ap.parse_args(argv)
    try:
        token = read_token(args.token_file)
        server = TokenProxyServer((args.listen_host, args.listen_port), args.upstream, token)
    except (OSError, ValueError) as e:
        print(f"token_proxy: {e}", file=sys.stderr)
        return 2
    print(f"token_proxy: http://{args.listen_host}:{server.server_address[1]} -> "
          f"{args.upstream} (token required)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
