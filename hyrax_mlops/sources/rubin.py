"""Rubin Science Platform cutouts through its IVOA services, the way the RSP documents them:

1. ObsCore (TAP sync, ADQL): which `deepCoadd_calexp` image holds each position, per band;
2. DataLink: the image's `access_url` describes its SODA `cutout-sync` service and `ID`;
3. SODA sync: `ID` + `CIRCLE ra dec r` answers a FITS with IMAGE, MASK and VARIANCE HDUs.

Each step goes through the download engine with its own journal (`locate`, `links`, then the
cutouts), so a resumed run repeats none of them. Every request carries the bearer token
(`$RSP_TOKEN`, a netrc password for the host, or `download.credentials_file` [rubin] token),
and only to the configured host.
"""

from __future__ import annotations

from typing import Any

from hyrax_mlops.config import ComponentConfig
from hyrax_mlops.downloader.credentials import bearer_token
from hyrax_mlops.downloader.engine import InvalidResponse, PermanentError, Request
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
from hyrax_mlops.sources.votable import query_result, read_votable

BANDS = ("u", "g", "r", "i", "z", "y")


class RubinConfig(ComponentConfig):
    """`[download.rubin]`: the Rubin Science Platform (ObsCore/TAP -> DataLink -> SODA
    cutout), or a Butler repo."""

    url: str = "https://data.lsst.cloud"
    dataset_type: str = "deepCoadd_calexp"
    token_env: str = "RSP_TOKEN"
    butler_repo: str = ""
    butler_collections: list[str] = []


@SURVEYS.register("rubin")
class Rubin(SurveySource):
    name = "rubin"
    pixel_scale = 0.2

    def default_bands(self) -> list[str]:
        return ["g", "r", "i"]

    def canonical_band(self, band: str) -> str:
        if band.lower() not in BANDS:
            raise ConfigError(f"config key 'download.bands': '{band}' is not a Rubin band. "
                              f"Valid: {', '.join(BANDS)}.")
        return band.lower()

    def credentials(self):
        return bearer_token(self.cfg.rubin.url, token_env=self.cfg.rubin.token_env,
                            file=self.cfg.credentials_file, section="rubin")

    # ---------------------------------------------------------------- 1. ObsCore
    def obscore_query(self, target: Target) -> str:
        bands = ", ".join(f"'{b}'" for b in self.bands)
        return ("SELECT lsst_band, s_ra, s_dec, access_url FROM ivoa.ObsCore "
                f"WHERE dataproduct_subtype = 'lsst.{self.cfg.rubin.dataset_type}' "
                f"AND CONTAINS(POINT('ICRS', {target.ra:.10f}, {target.dec:.10f}), "
                f"s_region) = 1 AND lsst_band IN ({bands})")

    def accept_locate(self, req: Request, body: bytes) -> dict[str, Any]:
        target: Target = req.context
        vot = query_result(body, "ObsCore")
        links: dict[str, tuple[float, str]] = {}
        for table in vot.iter_tables():
            t = table.to_table()
            for row in t:
                band, url = str(row["lsst_band"]), str(row["access_url"])
                # overlapping patches: take the image whose centre is nearest the object
                d = (float(row["s_ra"]) - target.ra) ** 2 + (float(row["s_dec"]) - target.dec) ** 2
                if band not in links or d < links[band][0]:
                    links[band] = (d, url)
        return {"links": {band: url for band, (_, url) in links.items()}}

    # ---------------------------------------------------------------- 2. DataLink
    @staticmethod
    def accept_links(req: Request, body: bytes) -> dict[str, Any]:
        vot = read_votable(body)
        for table in vot.iter_tables():
            t = table.to_table()
            if "error_message" in t.colnames:
                for row in t:
                    msg = str(row["error_message"] or "").strip()
                    if msg and msg != "--":
                        raise PermanentError(f"DataLink: {msg}"[:300])
        for resource in vot.resources:
            if resource.ID == "cutout-sync" or (resource.utype == "adhoc:service"
                                               and resource.ID and "cutout" in resource.ID):
                url = next((p.value for p in resource.params if p.name == "accessURL"), None)
                ident = next((p.value for g in resource.groups if g.name == "inputParams"
                              for p in g.entries if getattr(p, "name", "") == "ID"), None)
                if url and ident:
                    return {"soda_url": str(url), "id": str(ident)}
        raise InvalidResponse("DataLink answer has no cutout-sync service with an ID")

    # ---------------------------------------------------------------- 3. SODA
    def accept_cutout(self, store: CutoutStore, req: Request, body: bytes):
        target, band = req.context
        try:
            stamp = read_layers(body, list(self.cfg.layers), self.cfg.stamp_size)
        except TooSmall as exc:
            raise PermanentError(str(exc), reason="short_cutout") from None
        store.put(target.object_id, band, stamp)
        return {}

    def fetch(self, pending: list[tuple[Target, str]], store: CutoutStore, journal: Journal,
              ctx: DownloadContext) -> None:
        base = self.cfg.rubin.url.rstrip("/")
        creds = self.credentials()
        ctx.info["credentials"] = creds.origin

        def prepare(session) -> None:
            creds.apply(session, base)

        targets = {t.object_id: t for t, _ in pending}
        with Journal(ctx.work_dir / "locate.jsonl") as locate:
            self.run_engine(
                [Request(key=t.object_id, url=f"{base}/api/tap/sync",
                         params={"LANG": "ADQL", "REQUEST": "doQuery",
                                 "QUERY": self.obscore_query(t)}, context=t)
                 for t in targets.values()],
                self.accept_locate, locate, ctx, "locate", prepare=prepare, unit="object")
            located, locate_failed = dict(locate.done), dict(locate.failed)
        access = {located[oid]["links"][b] for oid in located
                  for b in located[oid]["links"]}
        with Journal(ctx.work_dir / "links.jsonl") as links_journal:
            self.run_engine([Request(key=url, url=url) for url in sorted(access)],
                            self.accept_links, links_journal, ctx, "links", prepare=prepare,
                            unit="image")
            services, links_failed = dict(links_journal.done), dict(links_journal.failed)

        requests = []
        radius = self.half_size_deg()
        for target, band in pending:
            key = item_key(target.object_id, band)
            oid = target.object_id
            if oid not in located:
                self.record_failed_step(journal, key, locate_failed.get(oid),
                                        "ObsCore lookup", "locate_failed")
                continue
            url = located[oid]["links"].get(band)
            if url is None:
                self.record_no_data(journal, key,
                                    f"{self.cfg.rubin.dataset_type} image in band {band}", target)
                continue
            if url not in services:
                self.record_failed_step(journal, key, links_failed.get(url), "DataLink",
                                        "links_failed")
                continue
            svc = services[url]
            requests.append(Request(
                key=key, url=svc["soda_url"], context=(target, band),
                params={"ID": svc["id"],
                        "CIRCLE": f"{target.ra:.10f} {target.dec:.10f} {radius:.10f}"}))
        self.run_engine(requests, lambda req, body: self.accept_cutout(store, req, body),
                        journal, ctx, "cutouts", prepare=prepare)


SOURCES.register("rubin")(survey_entry(RubinConfig))
