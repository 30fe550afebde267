"""Rubin cutouts straight from a Butler, for users on the Rubin Science Platform (or with a
local repo): `download.rubin.butler_repo` set, `source = "rubin"`.

Needs the LSST Science Pipelines (`lsst.daf.butler`, `lsst.geom`), which are not on PyPI;
without them the run stops before it starts, saying so. Positions are mapped to tract/patch
with the repo's sky map and each band's coadd is read with a `bbox` parameter, so only the
stamp is read. Not exercised by this project's tests (no Butler here): the SODA path is.
"""

from __future__ import annotations

from hyrax_mlops.config import DownloadConfig
from hyrax_mlops.downloader.journal import Journal
from hyrax_mlops.downloader.staging import CutoutStore, TooSmall, center_crop, item_key
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.sources.rubin import Rubin
from hyrax_mlops.sources.survey import BUTLER, SURVEYS, DownloadContext, Target


def require_butler():
    try:
        import lsst.geom as geom
        from lsst.daf.butler import Butler
    except ImportError:
        raise ConfigError(
            "download.rubin.butler_repo is set, but the LSST Science Pipelines "
            "(lsst.daf.butler) are not installed here. Fix: run on the Rubin Science Platform "
            "(or a machine with the Pipelines), or unset download.rubin.butler_repo to use "
            "the RSP's SODA cutout service with a token.") from None
    return Butler, geom


@SURVEYS.register(BUTLER)
class ButlerRubin(Rubin):
    name = BUTLER

    def __init__(self, cfg: DownloadConfig) -> None:
        super().__init__(cfg)
        self.Butler, self.geom = require_butler()

    def credentials(self):  # the Butler authenticates itself on the RSP
        from hyrax_mlops.downloader.credentials import Credentials

        return Credentials(origin="butler")

    def fetch(self, pending: list[tuple[Target, str]], store: CutoutStore, journal: Journal,
              ctx: DownloadContext) -> None:
        import numpy as np

        from hyrax_mlops.progress import tqdm

        r = self.cfg.rubin
        butler = self.Butler(r.butler_repo, collections=r.butler_collections or None)
        skymap = butler.get("skyMap", skymap=butler.registry.defaults.dataId.get("skymap"))
        half = self.cfg.stamp_size // 2 + 2
        for target, band in tqdm(pending, desc="rubin butler", unit="cutout"):
            key = item_key(target.object_id, band)
            point = self.geom.SpherePoint(target.ra, target.dec, self.geom.degrees)
            try:
                tract = skymap.findTract(point)
                patch = tract.findPatch(point)
                pixel = self.geom.Point2I(tract.getWcs().skyToPixel(point))
                box = self.geom.Box2I(pixel - self.geom.Extent2I(half, half),
                                      self.geom.Extent2I(2 * half, 2 * half))
                box.clip(patch.getOuterBBox())
                exposure = butler.get(r.dataset_type, parameters={"bbox": box},
                                      tract=tract.getId(), patch=patch.getSequentialIndex(),
                                      band=band)
                planes = {"image": exposure.image.array, "mask": exposure.mask.array,
                          "variance": exposure.variance.array}
                cube = np.stack([planes[layer] for layer in self.cfg.layers]).astype(np.float32)
                store.put(target.object_id, band, center_crop(cube, self.cfg.stamp_size))
                journal.record(key, "done", tract=tract.getId())
            except TooSmall as exc:
                journal.record(key, "failed", reason="short_cutout", detail=str(exc))
            except Exception as exc:  # one object's failure is recorded, never fatal
                journal.record(key, "failed", reason="butler",
                               detail=f"{type(exc).__name__}: {exc}"[:500])
