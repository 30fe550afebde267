"""Local stand-ins for three survey cutout services, on 127.0.0.1, serving real FITS.

`HSCServer` speaks HSC-SSP PDR3 das_cutout (a multipart coordinate list POSTed with HTTP basic
auth, answered with a tar of FITS). `RubinServer` speaks the Rubin Science Platform flow (TAP
ObsCore query -> DataLink -> SODA cutout-sync, bearer token). `EuclidServer` speaks IRSA's
Euclid Q1 access (SIA v2 over the MER mosaics, then IBE cutouts of a mosaic's access_url). All
cut their pixels from the four real HST WFC3/IR F105W images of Abell 2744 in `tests/data/sky/`
(see its README), with `Cutout2D(mode="trim")`, so a cutout near an image edge is smaller, as on
the real services.

All take the same fault plan as `tests/fault_server.py`: `faults=[...]` is consumed one entry
per authenticated request, in arrival order ("ok" = no fault), then `fault_rate` (with `seed`)
picks a fault from `fault_kinds` for that fraction of the remaining requests. Kinds: "500",
"429" (Retry-After: 0.05), "reset" (connection closed with no answer), "truncated"
(Content-Length promises the whole body, half is sent), "corrupt" (200 with a body that is not
valid for the endpoint), "slow" (waits `slow_s`, then answers normally).

Counters, under `lock`: `requests` (all requests), `served` (good cutouts per
`served_key(band, ra, dec)`), `log` ((path, status); status 0 for a reset).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email
import email.policy
import functools
import hmac
import io
import math
import random
import re
import tarfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from astropy.io import fits
from astropy.io.votable.tree import Info, VOTableFile
from astropy.nddata import Cutout2D
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

SKY_DIR = Path(__file__).parent / "data" / "sky"
FAULT_KINDS = ("500", "reset", "truncated", "429", "corrupt")
ORIGIN_NOTE = ("Pixels: real HST WFC3/IR F105W, Abell 2744 (HST Frontier Fields, via "
               "petrofit 0.5.0), served by the hyrax-mlops test server tests/survey_servers.py")
MASK_NOTE = "The source images have no mask plane: this MASK is all zeros."
VAR_NOTE = ("Constant: the sigma-clipped variance of the whole source image, estimated once "
            "per image (the source images have no variance plane).")


def served_key(band: str, ra: float, dec: float) -> str:
    """The key of `served`: the band as the client sent it, position in degrees."""
    return f"{band}|{ra:.6f}|{dec:.6f}"


# ---------------------------------------------------------------------------- sky images
@dataclass
class SkyImage:
    index: int
    name: str
    data: np.ndarray  # float32, native byte order
    header: fits.Header
    wcs: WCS
    pixscale_deg: float
    variance: float  # sigma-clipped, of the whole image
    ra: float  # centre of the image
    dec: float

    def edge_distance(self, ra: float, dec: float) -> float:
        """Pixels from (ra, dec) to the nearest edge pixel centre; < -0.5 means outside."""
        x, y = (float(v) for v in self.wcs.all_world2pix(ra, dec, 0))
        ny, nx = self.data.shape
        return min(x, y, nx - 1 - x, ny - 1 - y)

    def contains(self, ra: float, dec: float) -> bool:
        return self.edge_distance(ra, dec) >= -0.5


class SkyImages:
    """The real images of `tests/data/sky/`, loaded once per process (`SkyImages.default()`)."""

    def __init__(self, directory: Path = SKY_DIR) -> None:
        self.images: list[SkyImage] = []
        for i, path in enumerate(sorted(Path(directory).glob("*.fits"))):
            with fits.open(path) as hdul:
                data = np.asarray(hdul[0].data, dtype=np.float32).copy()
                header = hdul[0].header.copy()
            wcs = WCS(header)
            wcs.wcs.set()  # now, once: handler threads then only read it
            ny, nx = data.shape
            centre = wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
            _, _, std = sigma_clipped_stats(data, sigma=3.0, maxiters=10)
            self.images.append(SkyImage(
                index=i, name=path.name, data=data, header=header, wcs=wcs,
                pixscale_deg=float(np.mean(proj_plane_pixel_scales(wcs))),
                variance=float(std) ** 2, ra=float(centre.ra.deg), dec=float(centre.dec.deg)))
        if not self.images:
            raise FileNotFoundError(f"no FITS images in {directory}")

    @classmethod
    @functools.cache
    def default(cls) -> SkyImages:
        return cls()

    def find(self, ra: float, dec: float) -> SkyImage | None:
        """The image containing (ra, dec); where footprints overlap, the one it is deepest in."""
        best = max(self.images, key=lambda im: im.edge_distance(ra, dec))
        return best if best.contains(ra, dec) else None

    def cut(self, ra: float, dec: float, half_w_deg: float, half_h_deg: float,
            image: SkyImage | None = None) -> tuple[np.ndarray, fits.Header] | None:
        """(float32 pixels, header with the cutout's WCS) around (ra, dec), trimmed at the
        image edges; None when (ra, dec) is in no image (or not in `image`, if given)."""
        image = image or self.find(ra, dec)
        if image is None or not image.contains(ra, dec):
            return None
        x, y = (float(v) for v in image.wcs.all_world2pix(ra, dec, 0))
        ny = max(1, round(2 * half_h_deg / image.pixscale_deg))
        nx = max(1, round(2 * half_w_deg / image.pixscale_deg))
        cut = Cutout2D(image.data, (x, y), (ny, nx), wcs=image.wcs, mode="trim", copy=True)
        header = cut.wcs.to_header()
        if "BUNIT" in image.header:
            header["BUNIT"] = image.header["BUNIT"]
        header["SRCIMAGE"] = (image.name, "tests/data/sky image the pixels come from")
        return cut.data.astype(np.float32), header

    def layers_fits(self, primary: fits.Header, data: np.ndarray, header: fits.Header,
                    image: SkyImage, layers: Sequence[str] = ("IMAGE", "MASK", "VARIANCE"),
                    ) -> bytes:
        """A FITS file: `primary` header, then the requested IMAGE / MASK / VARIANCE HDUs."""
        primary = primary.copy()
        primary["COMMENT"] = ORIGIN_NOTE
        hdus: list = [fits.PrimaryHDU(header=primary)]
        for name in layers:
            h = header.copy()
            if name == "IMAGE":
                hdus.append(fits.ImageHDU(data, header=h, name="IMAGE"))
            elif name == "MASK":
                h.remove("BUNIT", ignore_missing=True)
                h["COMMENT"] = MASK_NOTE
                hdus.append(fits.ImageHDU(np.zeros(data.shape, np.int32), header=h, name="MASK"))
            else:
                if "BUNIT" in h:
                    h["BUNIT"] = f"({h['BUNIT']})**2"
                h["COMMENT"] = VAR_NOTE
                var = np.full(data.shape, image.variance, np.float32)
                hdus.append(fits.ImageHDU(var, header=h, name="VARIANCE"))
        buf = io.BytesIO()
        fits.HDUList(hdus).writeto(buf)
        return buf.getvalue()


# ---------------------------------------------------------------------------- fault plan
class FaultPlan:
    """Faults consumed one per authenticated request: the `faults` list first, then
    `fault_rate` of the remaining requests get a kind drawn from `kinds` (seeded)."""

    def __init__(self, faults: Sequence[str] | None = None, fault_rate: float = 0.0,
                 seed: int = 0, kinds: Sequence[str] = FAULT_KINDS) -> None:
        known = set(FAULT_KINDS) | {"slow", "ok"}
        for f in [*(faults or []), *kinds]:
            if f not in known:
                raise ValueError(f"unknown fault {f!r}; known: {sorted(known)}")
        self.faults = list(faults or [])
        self.fault_rate = fault_rate
        self.kinds = list(kinds)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.kinds)
            return "ok"


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict | None = None
    served: tuple[str, ...] = ()  # served keys, counted when delivered whole
    corrupt: bytes | None = None  # the "corrupt" body for this endpoint (default: garbage)


GARBAGE = b"SIMPLE  = this is not a FITS file" + bytes(200)


class _SurveyServer:
    """Threaded HTTP server, fault plan, counters; subclasses implement `route`."""

    auth_challenge = ""

    def __init__(self, *, faults: Sequence[str] | None = None, fault_rate: float = 0.0,
                 seed: int = 0, fault_kinds: Sequence[str] = FAULT_KINDS,
                 fault_paths: Sequence[str] | None = None, slow_s: float = 0.3,
                 latency_s: float = 0.0, sky: SkyImages | None = None) -> None:
        self.sky = sky or SkyImages.default()
        self.plan = FaultPlan(faults, fault_rate, seed, fault_kinds)
        self.fault_paths = tuple(fault_paths) if fault_paths is not None else None
        self.slow_s = slow_s
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.requests = 0
        self.served: Counter = Counter()
        self.log: list[tuple[str, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self, b"")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                server._handle(self, self.rfile.read(n) if n else b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # -- to implement
    def authorized(self, headers) -> bool:
        raise NotImplementedError

    def route(self, method: str, path: str, params: dict[str, str], body: bytes,
              headers) -> Answer:
        raise NotImplementedError

    # -- plumbing
    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        path = urlparse(h.path).path
        with self.lock:
            self.requests += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        if not self.authorized(h.headers):
            self._send(h, path, Answer(401, b"authentication required\n",
                                       headers={"WWW-Authenticate": self.auth_challenge}))
            return
        fault = "ok"
        if self.fault_paths is None or path in self.fault_paths:
            fault = self.plan.next()
        if fault == "reset":
            self._log(path, 0)
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(2)
            return
        if fault in ("500", "429"):
            headers = {"Retry-After": "0.05"} if fault == "429" else None
            msg = b"Too Many Requests\n" if fault == "429" else b"Internal Server Error\n"
            self._send(h, path, Answer(int(fault), msg, headers=headers))
            return
        if fault == "slow":
            time.sleep(self.slow_s)
        try:
            answer = self.route(h.command, path, _params(h, body), body, h.headers)
        except Exception as exc:  # a bug here must show, not hang the client
            answer = Answer(500, f"test server error: {exc!r}\n".encode())
        if fault == "corrupt":
            answer = Answer(200, answer.corrupt or GARBAGE, answer.content_type)
        self._send(h, path, answer, truncate=fault == "truncated")

    def _send(self, h: BaseHTTPRequestHandler, path: str, a: Answer,
              truncate: bool = False) -> None:
        self._log(path, a.status)
        h.send_response(a.status)
        h.send_header("Content-Type", a.content_type)
        h.send_header("Content-Length", str(len(a.body)))
        for k, v in (a.headers or {}).items():
            h.send_header(k, v)
        if truncate:
            h.send_header("Connection", "close")
        h.end_headers()
        try:
            h.wfile.write(a.body[: len(a.body) // 2] if truncate else a.body)
            h.wfile.flush()
        except OSError:
            return
        if truncate:
            h.close_connection = True
            return
        if a.status == 200 and a.served:
            with self.lock:
                self.served.update(a.served)

    def _log(self, path: str, status: int) -> None:
        with self.lock:
            self.log.append((path, status))

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _params(h: BaseHTTPRequestHandler, body: bytes) -> dict[str, str]:
    """Query-string and url-encoded form parameters, names lower-cased (last one wins)."""
    pairs = parse_qs(urlparse(h.path).query, keep_blank_values=True)
    ctype = (h.headers.get("Content-Type") or "").lower()
    if body and ctype.startswith("application/x-www-form-urlencoded"):
        for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
            pairs.setdefault(k, []).extend(v)
    return {k.lower(): v[-1] for k, v in pairs.items()}


def _text(status: int, msg: str) -> Answer:
    return Answer(status, (msg + "\n").encode())


# ---------------------------------------------------------------------------- HSC-SSP
HSC_PATH = "/das_cutout/pdr3/cgi-bin/cutout"
HSC_FILTERS = ("HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y")
HSC_RERUNS = ("pdr3_wide", "pdr3_dud", "pdr3_dud_rev")
HSC_TYPES = ("coadd", "coadd/bg")
HSC_COLUMNS = ("rerun", "type", "filter", "tract", "ra", "dec", "sw", "sh", "image", "mask",
               "variance", "name")
HSC_MAX_RECTS = 990
FLUXMAG0 = 63095734448.0194
_BOOLS = {"true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
          "false": False, "f": False, "no": False, "n": False, "off": False, "0": False}
_UNITS = {"deg": 1.0, "amin": 1 / 60, "arcmin": 1 / 60, "asec": 1 / 3600, "arcsec": 1 / 3600}
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_ANGLE = re.compile(rf"({_NUM})(deg|amin|arcmin|asec|arcsec)?")
_SEXA = re.compile(r"([+-]?)(\d+):(\d+):(\d+(?:\.\d*)?)")


def parse_angle(text: str, hours: bool = False) -> float:
    """Degrees from `150.1`, `1.5e+02deg`, `3asec`, `0.05amin`, or sexagesimal (hours when
    `hours`, for ra; degrees otherwise)."""
    s = text.strip().lower()
    m = _SEXA.fullmatch(s)
    if m:
        sign = -1.0 if m[1] == "-" else 1.0
        value = sign * (int(m[2]) + int(m[3]) / 60 + float(m[4]) / 3600)
        return value * 15 if hours else value
    m = _ANGLE.fullmatch(s)
    if not m:
        raise ValueError(f"cannot read angle {text!r}")
    return float(m[1]) * _UNITS[m[2] or "deg"]


@dataclass
class HSCRect:
    lineno: int
    rerun: str
    type: str
    filter: str  # as sent
    hsc_filter: str  # canonical HSC-X
    tract: int | None  # None = any
    ra: float
    dec: float
    sw: float
    sh: float
    layers: tuple[str, ...]


def parse_hsc_list(text: str) -> list[HSCRect]:
    """The uploaded coordinate list; ValueError("line N: ...") on anything malformed."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#?"):
        raise ValueError("line 1: the list must start with '#?' and the column names")
    columns = lines[0][2:].lower().split()
    for c in columns:
        if c not in HSC_COLUMNS:
            raise ValueError(f"line 1: unknown column {c!r}; known: {' '.join(HSC_COLUMNS)}")
    for c in ("filter", "ra", "dec", "sw", "sh"):
        if c not in columns:
            raise ValueError(f"line 1: column {c!r} is required")
    body = [(n, line) for n, line in enumerate(lines[1:], start=2)
            if line.strip() and not line.lstrip().startswith("#")]
    if len(body) > HSC_MAX_RECTS:
        raise ValueError(f"too many rectangles in one list: {len(body)} > {HSC_MAX_RECTS}")
    rects = []
    for lineno, line in body:
        values = line.split()
        if len(values) != len(columns):
            raise ValueError(f"line {lineno}: number of fields ({len(values)}) does not agree "
                             f"with what expected ({len(columns)})")
        row = dict(zip(columns, values, strict=True))
        try:
            rects.append(_hsc_rect(lineno, row))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
    return rects


def _hsc_rect(lineno: int, row: dict[str, str]) -> HSCRect:
    rerun = row.get("rerun", "pdr3_wide").lower()
    if rerun not in HSC_RERUNS:
        raise ValueError(f"invalid rerun {rerun!r}; valid: {', '.join(HSC_RERUNS)}")
    typ = row.get("type", "coadd").lower()
    if typ not in HSC_TYPES:
        raise ValueError(f"invalid type {typ!r}; valid: {', '.join(HSC_TYPES)}")
    sent = row["filter"]
    canon = sent.upper() if sent.upper() in HSC_FILTERS else (
        f"HSC-{sent.upper()}" if sent in "grizy" and len(sent) == 1 else None)
    if canon is None:
        raise ValueError(f"invalid filter {sent!r}; valid: {', '.join(HSC_FILTERS)}, g r i z y")
    tract_s = row.get("tract", "any").lower()
    if tract_s != "any" and not tract_s.lstrip("-").isdigit():
        raise ValueError(f"invalid tract {tract_s!r}: an integer or 'any'")
    tract = None if tract_s == "any" or int(tract_s) < 0 else int(tract_s)
    ra, dec = parse_angle(row["ra"], hours=True), parse_angle(row["dec"])
    sw, sh = parse_angle(row["sw"]), parse_angle(row["sh"])
    if not (0 <= ra < 360 or math.isclose(ra, 360)) or not -90 <= dec <= 90:
        raise ValueError(f"position out of range: ra={ra} dec={dec}")
    if sw <= 0 or sh <= 0:
        raise ValueError("sw and sh must be positive")
    flags = {}
    for c, default in (("image", True), ("mask", False), ("variance", False)):
        v = row.get(c)
        if v is not None and v.lower() not in _BOOLS:
            raise ValueError(f"invalid boolean {v!r} for {c}")
        flags[c] = default if v is None else _BOOLS[v.lower()]
    layers = tuple(c.upper() for c in ("image", "mask", "variance") if flags[c])
    if not layers:
        raise ValueError("none of image, mask, variance is requested")
    return HSCRect(lineno, rerun, typ, sent, canon, tract, ra, dec, sw, sh, layers)


class HSCServer(_SurveyServer):
    """HSC-SSP PDR3 das_cutout: POST `{url}/das_cutout/pdr3/cgi-bin/cutout`, basic auth."""

    auth_challenge = 'Basic realm="HSC-SSP"'

    def __init__(self, user: str = "hsc-user", password: str = "hsc-password", **kw) -> None:
        super().__init__(**kw)
        self.user, self.password = user, password
        self.api_url = self.url + "/das_cutout/pdr3"  # what downloadCutout.py calls api_url

    def tract(self, image: SkyImage) -> int:
        return 9800 + image.index

    def authorized(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except ValueError:
            return False
        return (hmac.compare_digest(user, self.user)
                and hmac.compare_digest(pw.encode(), self.password.encode()))

    def route(self, method, path, params, body, headers) -> Answer:
        if path != HSC_PATH:
            return _text(404, f"not found: {path}")
        if method != "POST":
            return _text(405, "POST a coordinate list as the multipart file field 'list'")
        listing = _multipart_field(headers.get("Content-Type") or "", body, "list")
        if listing is None:
            return _text(400, "no file field 'list' in a multipart/form-data body")
        try:
            rects = parse_hsc_list(listing.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return _text(400, str(exc))
        arch = "arch-" + datetime.datetime.now().strftime("%y%m%d-%H%M%S")
        members, served = [], []
        for r in rects:
            image = self.sky.find(r.ra, r.dec)
            if image is None or (r.tract is not None and r.tract != self.tract(image)):
                continue  # the real service skips what it has no data for
            data, header = self.sky.cut(r.ra, r.dec, r.sw, r.sh, image)
            primary = fits.Header()
            primary["FLUXMAG0"] = (FLUXMAG0, "flux of a 0-mag source (zero point 27)")
            primary["FILTER"] = (r.hsc_filter, "HSC filter requested (pixels: HST F105W)")
            primary["TRACT"] = self.tract(image)
            primary["RERUN"] = r.rerun
            primary["TESTDATA"] = ("HST F105W Abell 2744", "served by a test server")
            kind = "coadd+bg" if r.type == "coadd/bg" else "cutout"
            name = f"{arch}/{r.lineno}-{kind}-{r.hsc_filter}-{self.tract(image)}-{r.rerun}.fits"
            members.append((name, self.sky.layers_fits(primary, data, header, image, r.layers)))
            served.append(served_key(r.filter, r.ra, r.dec))
        body_ok = _tar(members)
        junk = _tar([(n, GARBAGE) for n, _ in members] or
                    [(f"{arch}/2-cutout-HSC-I-9800-pdr3_wide.fits", GARBAGE)])
        return Answer(200, body_ok, "application/x-tar", served=tuple(served), corrupt=junk)


def _multipart_field(content_type: str, body: bytes, field: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    msg = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
        policy=email.policy.HTTP)
    if not msg.is_multipart():
        return None
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == field:
            return part.get_payload(decode=True)
    return None


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(now), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------------------- Rubin RSP
RUBIN_BANDS = ("u", "g", "r", "i", "z", "y")
RUBIN_SUBTYPE = "lsst.deepCoadd_calexp"
BUTLER = "butler://dp02-local/"
_POINT = re.compile(
    rf"CONTAINS\s*\(\s*POINT\s*\(\s*'ICRS'\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,"
    r"\s*s_region\s*\)\s*=\s*1", re.I)
_BAND_EQ = re.compile(r"lsst_band\s*=\s*'(\w*)'", re.I)
_BAND_IN = re.compile(r"lsst_band\s+IN\s*\(\s*('\w*'(?:\s*,\s*'\w*')*)\s*\)", re.I)
_SUBTYPE = re.compile(r"dataproduct_subtype\s*=\s*'([^']*)'", re.I)
_DPTYPE = re.compile(r"dataproduct_type\s*=\s*'([^']*)'", re.I)
_CALIB = re.compile(r"calib_level\s*=\s*(\d+)", re.I)
_SELECT = re.compile(r"\s*SELECT\s+(?:TOP\s+(\d+)\s+)?(.+?)\s+FROM\s+ivoa\.ObsCore\s+"
                     r"WHERE\s+(.+?)\s*;?\s*", re.I | re.S)
OBSCORE_COLUMNS = ("lsst_band", "lsst_tract", "lsst_patch", "s_ra", "s_dec",
                   "dataproduct_subtype", "obs_publisher_did", "access_url")


class RubinServer(_SurveyServer):
    """RSP image cutouts: `{url}/api/tap/sync`, `{url}/api/datalink/links`,
    `{url}/api/cutout/sync`, all behind `Authorization: Bearer <token>`."""

    auth_challenge = 'Bearer realm="rsp"'

    def __init__(self, token: str = "rubin-token", bands: Sequence[str] = RUBIN_BANDS,
                 **kw) -> None:
        super().__init__(**kw)
        self.token = token
        self.bands = tuple(bands)
        self.datasets: dict[str, tuple[SkyImage, str]] = {}  # uuid -> (image, band)
        for image in self.sky.images:
            for band in self.bands:
                self.datasets[self.dataset_uuid(image, band)] = (image, band)

    @staticmethod
    def dataset_uuid(image: SkyImage, band: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dp02-local/{image.name}/{band}"))

    def tract_patch(self, image: SkyImage) -> tuple[int, int]:
        return 4431 + image.index, 10 + image.index

    def authorized(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        return auth.startswith("Bearer ") and hmac.compare_digest(
            auth[7:].strip().encode(), self.token.encode())

    def route(self, method, path, params, body, headers) -> Answer:
        if path == "/api/tap/sync":
            return self.tap(params)
        if path == "/api/datalink/links" and method == "GET":
            return self.links(params)
        if path == "/api/cutout/sync":
            return self.cutout(params)
        if path == "/api/image" and method == "GET":
            return self.image_file(params)
        return _text(404, f"not found: {path}")

    # -- 1. TAP
    def tap(self, params: dict[str, str]) -> Answer:
        if params.get("lang", "").upper() != "ADQL":
            return _tap_error("LANG=ADQL is required")
        if params.get("request", "doQuery").lower() != "doquery":
            return _tap_error(f"unsupported REQUEST {params['request']!r}")
        fmt = params.get("responseformat") or params.get("format") or "votable"
        if "votable" not in fmt.lower() and "xml" not in fmt.lower():
            return _tap_error(f"unsupported format {fmt!r}: this service answers VOTable only")
        query = params.get("query", "")
        m = _SELECT.fullmatch(query)
        if not m:
            return _tap_error("only SELECT ... FROM ivoa.ObsCore WHERE ... is supported")
        top, select, where = m.groups()
        cols = [c.strip() for c in select.split(",")]
        cols = list(OBSCORE_COLUMNS) if cols == ["*"] else [c.lower() for c in cols]
        for c in cols:
            if c not in OBSCORE_COLUMNS:
                return _tap_error(f"column {c!r} is not served; available: "
                                  f"{', '.join(OBSCORE_COLUMNS)}")
        point, bands, match = None, list(self.bands), True
        for term in re.split(r"\s+AND\s+", where.strip(), flags=re.I):
            term = term.strip()
            if mm := _POINT.fullmatch(term):
                point = float(mm[1]), float(mm[2])
            elif mm := _BAND_EQ.fullmatch(term):
                bands = [b for b in bands if b == mm[1]]
            elif mm := _BAND_IN.fullmatch(term):
                wanted = {v.strip().strip("'") for v in mm[1].split(",")}
                bands = [b for b in bands if b in wanted]
            elif mm := _SUBTYPE.fullmatch(term):
                match &= mm[1] == RUBIN_SUBTYPE
            elif mm := _DPTYPE.fullmatch(term):
                match &= mm[1] == "image"
            elif mm := _CALIB.fullmatch(term):
                match &= int(mm[1]) == 3
            else:
                return _tap_error(f"unsupported WHERE term: {term}")
        if point is None:
            return _tap_error("the query needs CONTAINS(POINT('ICRS', ra, dec), s_region) = 1")
        image = self.sky.find(*point) if match else None
        rows = []
        for band in bands if image is not None else []:
            uid = self.dataset_uuid(image, band)
            tract, patch = self.tract_patch(image)
            rows.append((band, tract, patch, image.ra, image.dec, RUBIN_SUBTYPE,
                         f"ivo://org.rubinobs/usdac/dp02-local?repo=dp02-local&id={uid}",
                         f"{self.url}/api/datalink/links?ID={quote(BUTLER + uid, safe='')}"))
        if top is not None:
            rows = rows[: int(top)]
        return Answer(200, _obscore_votable(rows, cols), "application/x-votable+xml",
                      corrupt=b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE><FIELD " + GARBAGE)

    # -- 2. DataLink
    def links(self, params: dict[str, str]) -> Answer:
        ident = params.get("id")
        if not ident:
            return _text(400, "UsageFault: missing ID parameter")
        found = self._dataset(ident)
        rows = []
        if found is None:
            rows.append((ident, "", "", f"NotFoundFault: {ident} is not a known dataset", "",
                         "", "", -1))
            meta = ""
        else:
            image, band = found
            rows.append((ident, f"{self.url}/api/image?ID={quote(ident, safe='')}", "", "",
                         "#this", f"{band}-band deepCoadd_calexp (whole image)",
                         "application/fits", -1))
            rows.append((ident, "", "cutout-sync", "", "#cutout",
                         "Cutout of the image (SODA sync)", "application/fits", -1))
            meta = _SODA_META.format(url=quoteattr(f"{self.url}/api/cutout/sync"),
                                     ident=quoteattr(ident))
        trs = "\n".join("<TR>" + "".join(f"<TD>{escape(str(v))}</TD>" for v in row) + "</TR>"
                        for row in rows)
        xml = _DATALINK.format(rows=trs, meta=meta)
        return Answer(200, xml.encode(), "application/x-votable+xml;content=datalink",
                      corrupt=b"<VOTABLE><RESOURCE type=" + GARBAGE)

    # -- 3. SODA
    def cutout(self, params: dict[str, str]) -> Answer:
        ident = params.get("id")
        if not ident:
            return _text(400, "UsageFault: missing ID parameter")
        found = self._dataset(ident)
        if found is None:
            return _text(404, f"NotFoundFault: {ident} is not a known dataset")
        image, band = found
        given = [k for k in ("circle", "pos", "polygon") if params.get(k)]
        if len(given) != 1:
            return _text(400, "UsageFault: give exactly one of CIRCLE, POS, POLYGON")
        try:
            ra, dec, half_w, half_h = _soda_region(given[0], params[given[0]])
        except ValueError as exc:
            return _text(400, f"UsageFault: {exc}")
        cut = self.sky.cut(ra, dec, half_w, half_h, image)
        if cut is None:
            return _text(400, f"UsageFault: the region centred on ra={ra} dec={dec} does not "
                              f"overlap {ident}")
        primary = fits.Header()
        primary["FILTER"] = (band, "Rubin band of the dataset (pixels: HST F105W)")
        primary["BAND"] = band
        primary["TESTDATA"] = ("HST F105W Abell 2744", "served by a test server")
        body = self.sky.layers_fits(primary, *cut, image)
        return Answer(200, body, "application/fits", served=(served_key(band, ra, dec),))

    def image_file(self, params: dict[str, str]) -> Answer:
        found = self._dataset(params.get("id", ""))
        if found is None:
            return _text(404, "NotFoundFault: unknown ID")
        image, band = found
        big = 2 * image.pixscale_deg * max(image.data.shape)
        cut = self.sky.cut(image.ra, image.dec, big, big, image)
        primary = fits.Header()
        primary["FILTER"] = band
        return Answer(200, self.sky.layers_fits(primary, *cut, image), "application/fits")

    def _dataset(self, ident: str) -> tuple[SkyImage, str] | None:
        if not ident.startswith(BUTLER):
            return None
        return self.datasets.get(ident[len(BUTLER):])


def _soda_region(kind: str, value: str) -> tuple[float, float, float, float]:
    """(ra, dec, half-width, half-height) in degrees of a SODA CIRCLE / POS / POLYGON."""
    words = value.split()
    if kind == "pos":
        if not words:
            raise ValueError("empty POS")
        kind, words = words[0].lower(), words[1:]
    try:
        nums = [float(w) for w in words]
    except ValueError:
        raise ValueError(f"cannot read numbers in {value!r}") from None
    if not all(math.isfinite(n) for n in nums):
        raise ValueError(f"non-finite value in {value!r}")
    if kind == "circle":
        if len(nums) != 3 or nums[2] <= 0:
            raise ValueError(f"CIRCLE needs 'ra dec radius' with radius > 0, got {value!r}")
        ra, dec, r = nums
        return ra % 360, dec, r, r
    if kind == "range":
        if len(nums) != 4 or nums[1] <= nums[0] or nums[3] <= nums[2]:
            raise ValueError(f"RANGE needs 'ra1 ra2 dec1 dec2' (ra1<ra2, dec1<dec2), "
                             f"got {value!r}")
        ra1, ra2, dec1, dec2 = nums
        dec = (dec1 + dec2) / 2
        return (ra1 + ra2) / 2 % 360, dec, (ra2 - ra1) / 2 * math.cos(math.radians(dec)), \
            (dec2 - dec1) / 2
    if kind == "polygon":
        if len(nums) < 6 or len(nums) % 2:
            raise ValueError(f"POLYGON needs at least 3 'ra dec' vertices, got {value!r}")
        ras, decs = nums[0::2], nums[1::2]
        dec = (min(decs) + max(decs)) / 2
        return ((min(ras) + max(ras)) / 2 % 360, dec,
                (max(ras) - min(ras)) / 2 * math.cos(math.radians(dec)),
                (max(decs) - min(decs)) / 2)
    raise ValueError(f"unsupported shape {kind.upper()!r} (CIRCLE, RANGE, POLYGON)")


def _obscore_votable(rows: list[tuple], cols: list[str]) -> bytes:
    table = Table()
    for i, name in enumerate(OBSCORE_COLUMNS):
        values = [row[i] for row in rows]
        if name in ("lsst_tract", "lsst_patch"):
            table[name] = np.array(values, dtype=np.int64)
        elif name in ("s_ra", "s_dec"):
            table[name] = np.array(values, dtype=np.float64)
        else:
            table[name] = np.array(values, dtype=str) if values else np.array([], dtype="U1")
    return _results_votable(table[cols])


def _results_votable(table: Table) -> bytes:
    """A query's answer: the table in a results RESOURCE with QUERY_STATUS OK."""
    vot = VOTableFile.from_table(table)
    resource = vot.resources[0]
    resource.type = "results"
    resource.infos.append(Info(name="QUERY_STATUS", value="OK"))
    buf = io.BytesIO()
    vot.to_xml(buf)
    return buf.getvalue()


def _tap_error(message: str) -> Answer:
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
           '<RESOURCE type="results">\n'
           f'<INFO name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n'
           '</RESOURCE>\n</VOTABLE>\n')
    return Answer(400, xml.encode(), "application/x-votable+xml")


_DATALINK = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results">
<TABLE>
<FIELD name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.main"/>
<FIELD name="access_url" datatype="char" arraysize="*" ucd="meta.ref.url"/>
<FIELD name="service_def" datatype="char" arraysize="*" ucd="meta.ref"/>
<FIELD name="error_message" datatype="char" arraysize="*" ucd="meta.code.error"/>
<FIELD name="semantics" datatype="char" arraysize="*" ucd="meta.code"/>
<FIELD name="description" datatype="char" arraysize="*" ucd="meta.note"/>
<FIELD name="content_type" datatype="char" arraysize="*" ucd="meta.code.mime"/>
<FIELD name="content_length" datatype="long" ucd="phys.size;meta.file" unit="byte">
<VALUES null="-1"/></FIELD>
<DATA><TABLEDATA>
{rows}
</TABLEDATA></DATA>
</TABLE>
</RESOURCE>
{meta}
</VOTABLE>
"""

_SODA_META = """<RESOURCE type="meta" utype="adhoc:service" ID="cutout-sync">
<PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/SODA#sync-1.0"/>
<PARAM name="accessURL" datatype="char" arraysize="*" value={url}/>
<GROUP name="inputParams">
<PARAM name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.dataset" value={ident}/>
<PARAM name="POS" datatype="char" arraysize="*" ucd="pos.outline;obs" value=""/>
<PARAM name="CIRCLE" datatype="double" arraysize="3" xtype="circle" unit="deg" ucd="obs.field"
 value=""/>
<PARAM name="POLYGON" datatype="double" arraysize="*" xtype="polygon" unit="deg"
 ucd="obs.field" value=""/>
</GROUP>
</RESOURCE>"""



# ---------------------------------------------------------------------------- Euclid (IRSA)
EUCLID_COLLECTION = "euclid_DpdMerBksMosaic"
EUCLID_BANDS = (("VIS", "VIS"), ("NISP", "Y"), ("NISP", "J"), ("NISP", "H"), ("DECAM", "r"))
EUCLID_PRODUCTS = ("science", "noise", "flag")  # the client must keep only the science mosaics
SIA_COLUMNS = ("obs_id", "s_ra", "s_dec", "instrument_name", "energy_bandpassname",
               "dataproduct_subtype", "access_url", "access_estsize")
EUCLID_MAGZERO = 23.9  # MER mosaics' AB zero point (pixels in microjansky)


class EuclidServer(_SurveyServer):
    """IRSA's Euclid Q1 access: SIA v2 at `{url}/SIA` (COLLECTION, POS=CIRCLE ra dec r) answers
    a VOTable of MER mosaics (one row per band and product); each `access_url` under
    `/ibe/data/euclid/q1/MER/...` answers an IBE cutout for `center=ra,dec[deg]&size=N[px]`
    (gzipped unless gzip=false; clipped at the mosaic's edge; 400 when it does not overlap).
    Public: no authentication."""

    def __init__(self, bands: Sequence[tuple[str, str]] = EUCLID_BANDS, **kw) -> None:
        super().__init__(**kw)
        self.bands = tuple(bands)
        # path -> (image, instrument, band, product)
        self.files: dict[str, tuple[SkyImage, str, str, str]] = {}
        for image in self.sky.images:
            for inst, band in self.bands:
                for product in EUCLID_PRODUCTS:
                    self.files[self.mosaic_path(image, inst, band, product)] = (
                        image, inst, band, product)

    def tile(self, image: SkyImage) -> int:
        return 102018211 + image.index

    def mosaic_path(self, image: SkyImage, inst: str, band: str, product: str) -> str:
        kind = {"science": "BGSUB-MOSAIC", "noise": "MOSAIC-RMS", "flag": "MOSAIC-FLAG"}[product]
        name = band if inst == "VIS" else f"{inst}-{band}"
        folder = inst if inst in ("VIS", "NISP") else "EXT"
        return (f"/ibe/data/euclid/q1/MER/{self.tile(image)}/{folder}/EUC_MER_{kind}-{name}"
                f"_TILE{self.tile(image)}-LOCAL_00.00.fits")

    def authorized(self, headers) -> bool:
        return True

    def route(self, method, path, params, body, headers) -> Answer:
        if path == "/SIA" and method == "GET":
            return self.sia(params)
        if path in self.files and method == "GET":
            return self.cutout(path, params)
        return _text(404, f"not found: {path}")

    def sia(self, params: dict[str, str]) -> Answer:
        if params.get("collection") != EUCLID_COLLECTION:
            return _sia_error(f"unknown COLLECTION {params.get('collection')!r}")
        words = params.get("pos", "").split()
        try:
            if not words or words[0].upper() != "CIRCLE" or len(words) != 4:
                raise ValueError
            ra, dec, radius = (float(w) for w in words[1:])
        except ValueError:
            return _sia_error(f"POS must be 'CIRCLE ra dec radius', got {params.get('pos')!r}")
        rows = []
        for image in self.sky.images:
            if image.edge_distance(ra, dec) < -0.5 - radius / image.pixscale_deg:
                continue
            for path, (im, inst, band, product) in self.files.items():
                if im is image:
                    rows.append((f"{self.tile(image)}_{inst}_{band}", image.ra, image.dec, inst,
                                 band, product, self.url + path, image.data.nbytes // 1000))
        return Answer(200, _sia_votable(rows), "application/x-votable+xml",
                      corrupt=b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE><FIELD " + GARBAGE)

    def cutout(self, path: str, params: dict[str, str]) -> Answer:
        image, inst, band, product = self.files[path]
        try:
            ra, dec = (float(v) for v in params["center"].removesuffix("deg").split(","))
            size = params["size"]
            if not size.endswith("px"):
                raise ValueError("this test server takes size in px")
            n = int(size.removesuffix("px"))
        except (KeyError, ValueError) as exc:
            return _text(400, f"bad cutout parameters: {exc}")
        half = n * image.pixscale_deg / 2
        cut = self.sky.cut(ra, dec, half, half, image)
        if cut is None:
            return _text(400, "Bad Request: the cutout does not intersect the image")
        data, header = cut
        header["MAGZERO"] = (EUCLID_MAGZERO, "AB zero point of the MER mosaics")
        header["INSTRUME"] = inst
        header["FILTER"] = band
        header["TESTDATA"] = ("HST F105W Abell 2744", "served by a test server")
        header["COMMENT"] = ORIGIN_NOTE
        if product != "science":
            data = np.zeros_like(data)  # only the science mosaic has the sky's pixels here
        buf = io.BytesIO()
        fits.PrimaryHDU(data, header=header).writeto(buf)
        body = buf.getvalue()
        if params.get("gzip", "true").lower() != "false":
            import gzip

            body = gzip.compress(body)
        served = (served_key(f"{inst}_{band}", ra, dec),) if product == "science" else ()
        return Answer(200, body, "application/fits", served=served)


def _sia_votable(rows: list[tuple]) -> bytes:
    table = Table()
    for i, name in enumerate(SIA_COLUMNS):
        values = [row[i] for row in rows]
        if name in ("s_ra", "s_dec"):
            table[name] = np.array(values, dtype=np.float64)
        elif name == "access_estsize":
            table[name] = np.array(values, dtype=np.int64)
        else:
            table[name] = np.array(values, dtype=str) if values else np.array([], dtype="U1")
    return _results_votable(table)


def _sia_error(message: str) -> Answer:
    return Answer(400, _tap_error(message).body, "application/x-votable+xml")


# ---------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """Serve one of them until interrupted: `python tests/survey_servers.py hsc|rubin`.

    Prints one JSON line first (its URL and the environment a client needs), so a script or a
    benchmark can start it as a separate process and read where it listens.
    """
    import argparse
    import json
    import signal
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("service", choices=["hsc", "rubin", "euclid"])
    ap.add_argument("--fault-rate", type=float, default=0.0,
                    help="fraction of requests that fail (500, reset, truncated, 429, corrupt)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    args = ap.parse_args(argv)
    kw = {"fault_rate": args.fault_rate, "seed": args.seed, "latency_s": args.latency}
    if args.service == "hsc":
        server = HSCServer(**kw)
        info = {"url": server.api_url, "config": {"download.source": "hsc",
                                                  "download.hsc.url": server.api_url},
                "env": {"HSC_SSP_CAS_USER": server.user,
                        "HSC_SSP_CAS_PASSWORD": server.password}}
    elif args.service == "rubin":
        server = RubinServer(**kw)
        info = {"url": server.url, "config": {"download.source": "rubin",
                                              "download.rubin.url": server.url},
                "env": {"RSP_TOKEN": server.token}}
    else:
        server = EuclidServer(**kw)
        info = {"url": server.url, "config": {"download.source": "euclid",
                                              "download.euclid.url": server.url}, "env": {}}
    info["catalog"] = str(SKY_DIR / "catalog.csv")
    info["pixel_scale"] = 0.06
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(json.dumps(info), flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        with server.lock:
            print(json.dumps({"requests": server.requests, "served": len(server.served)}),
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
