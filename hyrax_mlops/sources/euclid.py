"""Euclid cutouts from the Q1 MER mosaics at IRSA, through the two requests IRSA documents:

1. SIA v2 (`{url}/SIA?COLLECTION=euclid_DpdMerBksMosaic&POS=CIRCLE ra dec r`): the mosaics
   covering each position, one row per band and product; the `science` products are kept, and
   where MER tiles overlap, the tile whose centre is nearest the object;
2. IBE cutout: the mosaic's `access_url` with `center=ra,dec&size=Npx&gzip=false` appended
   answers a FITS of that region (clipped at the tile's edge, as the stamp then says).

MER mosaics share one 0.1"/pixel grid in every band: VIS and NISP Y, J, H (and the ground-based
bands resampled onto it, named INSTRUMENT_BAND, e.g. DECAM_r). One file per band, each with its
MAGZERO (AB), which the manifest keeps. Q1 is public: no credentials are sent.
"""

from __future__ import annotations

import gzip
from typing import Any

from hyrax_mlops.config import ComponentConfig
from hyrax_mlops.downloader.engine import PermanentError, Request
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
from hyrax_mlops.sources.votable import query_result

# canonical name -> (instrument_name, energy_bandpassname) as IRSA's SIA rows give them
EUCLID_BANDS = {"VIS": ("VIS", "VIS"), "NIR-Y": ("NISP", "Y"), "NIR-J": ("NISP", "J"),
                "NIR-H": ("NISP", "H")}
_ALIASES = {"VIS": "VIS", "Y": "NIR-Y", "J": "NIR-J", "H": "NIR-H"}
_LOCATE_RADIUS_DEG = 1.0 / 3600  # a mosaic must cover the object, not merely come near it


class EuclidConfig(ComponentConfig):
    """`[download.euclid]`: IRSA's SIA v2 service and the MER mosaic collection it searches."""

    url: str = "https://irsa.ipac.caltech.edu"
    collection: str = "euclid_DpdMerBksMosaic"
    product: str = "science"  # dataproduct_subtype of the mosaics cut (not noise/flag maps)


def band_key(band: str) -> tuple[str, str]:
    """(instrument, band) of a canonical band name, upper-cased, as SIA rows are matched."""
    if band in EUCLID_BANDS:
        return EUCLID_BANDS[band]
    instrument, _, name = band.partition("_")
    return instrument.upper(), name.upper()


@SURVEYS.register("euclid")
class Euclid(SurveySource):
    name = "euclid"
    pixel_scale = 0.1  # MER mosaics, every band

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        extra = [layer for layer in cfg.layers if layer != "image"]
        if extra:
            raise ConfigError(f"config key 'download.layers': the euclid source cuts the MER "
                              f"science mosaics only, so it has no {', '.join(extra)} layer. "
                              'Fix: --set download.layers=["image"]')

    def default_bands(self) -> list[str]:
        return ["VIS", "NIR-Y", "NIR-J", "NIR-H"]

    def canonical_band(self, band: str) -> str:
        b = band.strip()
        up = b.upper().replace("_", "-")
        if up in EUCLID_BANDS:  # VIS, NIR-Y, nir_y
            return up
        if up in _ALIASES or (up.startswith("NISP-") and up[5:] in _ALIASES):
            return _ALIASES[up.removeprefix("NISP-")]
        instrument, sep, name = b.partition("_")
        if sep and instrument and name:  # a ground-based band on the MER grid: DECAM_r
            return f"{instrument.upper()}_{name}"
        raise ConfigError(f"config key 'download.bands': '{band}' is not a Euclid MER band. "
                          f"Valid: {', '.join(EUCLID_BANDS)} (also Y, J, H), or a ground-based "
                          "mosaic as INSTRUMENT_BAND, e.g. DECAM_r.")

    # ---------------------------------------------------------------- 1. SIA v2
    def sia_params(self, target: Target) -> dict[str, str]:
        c = self.cfg.euclid
        return {"COLLECTION": c.collection, "RESPONSEFORMAT": "VOTABLE",
                "POS": f"CIRCLE {target.ra:.10f} {target.dec:.10f} {_LOCATE_RADIUS_DEG:.10f}"}

    def accept_locate(self, req: Request, body: bytes) -> dict[str, Any]:
        target: Target = req.context
        vot = query_result(body, "SIA")
        wanted = {band_key(b): b for b in self.bands}
        found: dict[str, tuple[float, str, str]] = {}
        for table in vot.iter_tables():
            t = table.to_table()
            for row in t:
                if str(row["dataproduct_subtype"]).strip() != self.cfg.euclid.product:
                    continue
                key = (str(row["instrument_name"]).strip().upper(),
                       str(row["energy_bandpassname"]).strip().upper())
                band = wanted.get(key)
                if band is None:
                    continue
                d = (float(row["s_ra"]) - target.ra) ** 2 + (float(row["s_dec"]) - target.dec) ** 2
                if band not in found or d < found[band][0]:
                    found[band] = (d, str(row["access_url"]), str(row["obs_id"]))
        return {"mosaics": {b: {"url": url, "obs_id": obs} for b, (_, url, obs) in found.items()}}

    # ---------------------------------------------------------------- 2. IBE cutout
    def accept_cutout(self, store: CutoutStore, req: Request, body: bytes) -> dict[str, Any]:
        target, band = req.context
        if body[:2] == b"\x1f\x8b":  # a server that gzips regardless of gzip=false
            body = gzip.decompress(body)
        try:
            stamp = read_layers(body, ["image"], self.cfg.stamp_size)
        except TooSmall as exc:
            raise PermanentError(f"{exc} (the object is near the mosaic's edge)",
                                 reason="short_cutout") from None
        store.put(target.object_id, band, stamp)
        return {"magzero": _magzero(body)}

    def fetch(self, pending: list[tuple[Target, str]], store: CutoutStore, journal: Journal,
              ctx: DownloadContext) -> None:
        base = self.cfg.euclid.url.rstrip("/")
        targets = {t.object_id: t for t, _ in pending}
        with Journal(ctx.work_dir / "locate.jsonl") as locate:
            self.run_engine(
                [Request(key=t.object_id, url=f"{base}/SIA", params=self.sia_params(t),
                         context=t) for t in targets.values()],
                self.accept_locate, locate, ctx, "locate", unit="object")
            located, locate_failed = dict(locate.done), dict(locate.failed)

        size = self.cfg.stamp_size + 4  # a 2-pixel margin: rounding never leaves it short
        requests = []
        for target, band in pending:
            key, oid = item_key(target.object_id, band), target.object_id
            if oid not in located:
                self.record_failed_step(journal, key, locate_failed.get(oid), "SIA search",
                                        "locate_failed")
                continue
            mosaic = located[oid]["mosaics"].get(band)
            if mosaic is None:
                self.record_no_data(journal, key, f"{self.cfg.euclid.collection} {band} mosaic",
                                    target)
                continue
            requests.append(Request(
                key=key, url=mosaic["url"], context=(target, band),
                params={"center": f"{target.ra:.10f},{target.dec:.10f}deg",
                        "size": f"{size}px", "gzip": "false"}))
        self.run_engine(requests, lambda req, body: self.accept_cutout(store, req, body),
                        journal, ctx, "cutouts")
        zeropoints: dict[str, set[float]] = {}
        for key, done in journal.done.items():
            if done.get("magzero") is not None:
                zeropoints.setdefault(key.rsplit("|", 1)[1], set()).add(done["magzero"])
        ctx.info["magzero"] = {b: sorted(v)[0] if len(v) == 1 else sorted(v)
                               for b, v in sorted(zeropoints.items())}


def _magzero(body: bytes) -> float | None:
    """The AB zero point (MAGZERO) of a cutout's header, if it has one."""
    import io

    from astropy.io import fits

    with fits.open(io.BytesIO(body), memmap=False) as hdul:
        for hdu in hdul:
            if "MAGZERO" in hdu.header:
                return float(hdu.header["MAGZERO"])
    return None


SOURCES.register("euclid")(survey_entry(EuclidConfig))
