"""HSC-SSP PDR3 cutouts from the `das_cutout` service.

The protocol (HSC's own `downloadCutout.py` and the service manual): POST a coordinate list
as the multipart file field `list` to `<url>/cgi-bin/cutout` with HTTP basic auth, at most
990 rectangles a request. The list's first line names the columns (`#? rerun type filter
tract ra dec sw sh image mask variance`); `sw`/`sh` are semi-width/height. The answer is a
tar with one FITS per rectangle found, `arch-*/{lineno}-cutout-{filter}-{tract}-{rerun}.fits`,
lineno counting the header as line 1; a rectangle with no data has no member.
Credentials: `$HSC_SSP_CAS_USER`/`$HSC_SSP_CAS_PASSWORD`, a netrc entry for the host, or
`download.credentials_file` ([hsc] user/password).
"""

from __future__ import annotations

import io
import re
import tarfile
from typing import Literal

from pydantic import Field

from hyrax_mlops.config import ComponentConfig
from hyrax_mlops.downloader.credentials import basic_auth
from hyrax_mlops.downloader.engine import InvalidResponse, Outcome, Request
from hyrax_mlops.downloader.journal import Journal
from hyrax_mlops.downloader.staging import CutoutStore, TooSmall, item_key, read_layers
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.sources import SOURCES
from hyrax_mlops.sources.survey import (
    SURVEYS,
    DownloadContext,
    SurveySource,
    Target,
    survey_entry,
)

FILTERS = {"g": "HSC-G", "r": "HSC-R", "i": "HSC-I", "z": "HSC-Z", "y": "HSC-Y"}
NARROW = ("NB0387", "NB0400", "NB0468", "NB0515", "NB0527", "NB0656", "NB0718", "NB0816",
          "NB0921", "NB0926", "NB0973", "NB1010", "IB0945")
COLUMNS = "rerun type filter tract ra dec sw sh image mask variance"
MEMBER = re.compile(r"(?:.*/)?(?P<lineno>\d+)-(?:cutout|coadd\+bg)-(?P<filter>[^/]+)"
                    r"-(?P<tract>\d+)-(?P<rerun>[^/]+)\.fits")


class HSCConfig(ComponentConfig):
    """`[download.hsc]`: HSC-SSP `das_cutout` (PDR3), the service's own options."""

    url: str = "https://hsc-release.mtk.nao.ac.jp/das_cutout/pdr3"
    rerun: Literal["pdr3_wide", "pdr3_dud", "pdr3_dud_rev"] = "pdr3_wide"
    type: Literal["coadd", "coadd/bg"] = "coadd"
    rects_per_request: int = Field(990, ge=1, le=990)
    user_env: str = "HSC_SSP_CAS_USER"
    password_env: str = "HSC_SSP_CAS_PASSWORD"


@SURVEYS.register("hsc")
class HSC(SurveySource):
    name = "hsc"
    pixel_scale = 0.168

    def default_bands(self) -> list[str]:
        return list(FILTERS.values())

    def canonical_band(self, band: str) -> str:
        if band in FILTERS.values() or band in NARROW:
            return band
        if band.lower() in FILTERS:
            return FILTERS[band.lower()]
        raise ConfigError(f"config key 'download.bands': '{band}' is not an HSC filter. "
                          f"Valid: {', '.join(FILTERS.values())} (or g r i z y), "
                          f"{', '.join(NARROW)}.")

    def coordinate_list(self, items: list[tuple[Target, str]]) -> str:
        """The list the service takes: a header naming the columns, then one rectangle a line."""
        h = self.cfg.hsc
        half = f"{self.half_size_deg():.10f}deg"
        flags = ["true" if layer in self.cfg.layers else "false"
                 for layer in ("image", "mask", "variance")]
        lines = [f"#? {COLUMNS}"]
        for target, band in items:
            lines.append(" ".join([h.rerun, h.type, band, "any", f"{target.ra:.10f}deg",
                                   f"{target.dec:.10f}deg", half, half, *flags]))
        return "\n".join(lines) + "\n"

    def accept(self, store: CutoutStore, req: Request, body: bytes) -> Outcome:
        """Unpack the tar; stage each rectangle's layers; rectangles without a member had no
        data at the service (outside the footprint or the rerun)."""
        lines: list[tuple[Target, str]] = req.context
        outcome = Outcome()
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                answers = []
                for member in members:
                    m = MEMBER.fullmatch(member.name)
                    if not m:
                        raise InvalidResponse(f"unexpected tar member {member.name!r}")
                    index = int(m["lineno"]) - 2
                    if not 0 <= index < len(lines):
                        raise InvalidResponse(f"tar member {member.name!r} names no line sent")
                    answers.append((index, int(m["tract"]), tar.extractfile(member).read()))
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidResponse(f"not a tar archive: {exc}") from None
        staged = {}
        for index, tract, fits_bytes in answers:
            target, band = lines[index]
            key = item_key(target.object_id, band)
            try:
                stamp = read_layers(fits_bytes, list(self.cfg.layers), self.cfg.stamp_size)
            except TooSmall as exc:
                outcome.failed[key] = ("short_cutout", str(exc))
                continue
            staged[key] = (target, band, stamp, tract)
        for key, (target, band, stamp, tract) in staged.items():  # all read: now keep them
            store.put(target.object_id, band, stamp)
            outcome.done[key] = {"tract": tract}
        for target, band in lines:
            key = item_key(target.object_id, band)
            if key not in outcome.done and key not in outcome.failed:
                outcome.failed[key] = ("no_data", f"the service has no {band} "
                                       f"{self.cfg.hsc.rerun} image at ra={target.ra:.6f} "
                                       f"dec={target.dec:.6f}")
        return outcome

    def endpoint(self) -> str:
        return self.cfg.hsc.url.rstrip("/") + "/cgi-bin/cutout"

    def credentials(self):
        return basic_auth(self.endpoint(), user_env=self.cfg.hsc.user_env,
                          password_env=self.cfg.hsc.password_env,
                          file=self.cfg.credentials_file, section="hsc")

    def fetch(self, pending: list[tuple[Target, str]], store: CutoutStore, journal: Journal,
              ctx: DownloadContext) -> None:
        url = self.endpoint()
        creds = self.credentials()
        ctx.info["credentials"] = creds.origin
        # sorted by position and band so each list touches few tracts (the service caches)
        pending = sorted(pending, key=lambda tb: (round(tb[0].dec, 1), tb[0].ra, tb[1]))
        n = self.cfg.hsc.rects_per_request
        requests = []
        for start in range(0, len(pending), n):
            chunk = pending[start:start + n]
            requests.append(Request(
                key=f"list{start // n:05d}", url=url, method="POST",
                files={"list": ("coordlist.txt", self.coordinate_list(chunk), "text/plain")},
                items=[item_key(t.object_id, b) for t, b in chunk], context=chunk))
        self.run_engine(requests, lambda req, body: self.accept(store, req, body), journal,
                        ctx, "cutouts", prepare=lambda s: creds.apply(s, url))


SOURCES.register("hsc")(survey_entry(HSCConfig))
