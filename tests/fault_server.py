"""A local HTTP server on 127.0.0.1 that serves real FITS cutouts and misbehaves on purpose.

`/cutout?id=KEY` answers with a real XDF stamp as FITS. A fault plan maps a key to the faults
of its successive attempts: "500", "429" (Retry-After: 0.05), "reset" (connection closed with
no answer), "truncated" (Content-Length promises more than is sent), "corrupt" (200 with
garbage), "slow" (waits `slow_s` first), "ok"; "always500" fails every attempt. The server
counts requests and good answers per key.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from astropy.io import fits

STAMPS = Path(__file__).parent / "data" / "xdf_fits" / "stamps"


class FaultServer:
    def __init__(self, plan: dict[str, list[str]] | None = None, slow_s: float = 0.3) -> None:
        self.plan = plan or {}
        self.slow_s = slow_s
        self.requests: Counter = Counter()
        self.served: Counter = Counter()
        self.log: list[str] = []
        self._lock = threading.Lock()
        files = sorted(STAMPS.glob("*.fits"))
        self._fits = [f.read_bytes() for f in files]
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                key = parse_qs(urlparse(self.path).query).get("id", [""])[0]
                with server._lock:
                    attempt = server.requests[key]
                    server.requests[key] += 1
                    server.log.append(key)
                plan = server.plan.get(key, [])
                fault = ("always500" if plan == ["always500"] else
                         plan[attempt] if attempt < len(plan) else "ok")
                body = server._fits[sum(map(ord, key)) % len(server._fits)]
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault in ("500", "always500"):
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif fault == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0.05")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif fault == "reset":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)
                elif fault == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif fault == "corrupt":
                    junk = b"SIMPLE  = this is not a FITS file" + bytes(200)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(junk)))
                    self.end_headers()
                    self.wfile.write(junk)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fits")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    with server._lock:
                        server.served[key] += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def is_fits_stamp(body: bytes) -> tuple:
    """Shape of the FITS image in `body`; raises if it is not one."""
    with fits.open(io.BytesIO(body)) as hdul:
        return hdul[0].data.shape
