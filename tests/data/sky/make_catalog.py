"""Build catalog.csv: real sources detected with SEP on the four Abell 2744 F105W images.

Run from the repository root:  .venv/bin/python tests/data/sky/make_catalog.py

Per image: SEP background in 32 px boxes (the images are only 100-256 px), extraction at
3 sigma of the global background rms, minarea 8; centroids go to RA/Dec with the image's WCS,
and sources closer than 12 px to an edge are dropped. Across images, detections within 0.5"
are one source, kept with the image where it lies farthest from an edge (the rule
`tests/survey_servers.py` uses to pick an image where footprints overlap).
Two rows well outside every footprint (OFF-0001, OFF-0002) are appended with an empty image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import sep
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

HERE = Path(__file__).parent
THRESH, MINAREA, EDGE, MATCH_ARCSEC = 3.0, 8, 12, 0.5


def detect(path: Path) -> list[tuple[float, float, float, str]]:
    """(ra, dec, edge distance in px, image name) of the sources kept in one image."""
    with fits.open(path) as hdul:
        data = np.ascontiguousarray(hdul[0].data, dtype=np.float32)
        wcs = WCS(hdul[0].header)
    bkg = sep.Background(data, bw=32, bh=32)
    objs = sep.extract(data - bkg.back(), THRESH, err=bkg.globalrms, minarea=MINAREA)
    ny, nx = data.shape
    rows = []
    for x, y in zip(objs["x"], objs["y"], strict=True):
        edge = min(x, y, nx - 1 - x, ny - 1 - y)
        if edge < EDGE:
            continue
        sky = wcs.pixel_to_world(x, y)
        rows.append((float(sky.ra.deg), float(sky.dec.deg), float(edge), path.name))
    return rows


def main() -> None:
    found = [r for p in sorted(HERE.glob("*.fits")) for r in detect(p)]
    found.sort(key=lambda r: -r[2])  # deepest inside an image first: that copy is kept
    kept: list[tuple[float, float, float, str]] = []
    for row in found:
        if kept:
            here = SkyCoord(row[0], row[1], unit="deg")
            there = SkyCoord([k[0] for k in kept], [k[1] for k in kept], unit="deg")
            if here.separation(there).arcsec.min() < MATCH_ARCSEC:
                continue
        kept.append(row)
    kept.sort(key=lambda r: (r[0], r[1]))
    ra0, dec0 = kept[0][0], kept[0][1]
    with open(HERE / "catalog.csv", "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["object_id", "ra", "dec", "image"])
        for i, (ra, dec, _, image) in enumerate(kept, 1):
            out.writerow([f"A2744-{i:04d}", f"{ra:.7f}", f"{dec:.7f}", image])
        out.writerow(["OFF-0001", f"{ra0 + 1.0:.7f}", f"{dec0:.7f}", ""])
        out.writerow(["OFF-0002", f"{ra0 - 1.0:.7f}", f"{dec0 + 1.0:.7f}", ""])
    print(f"{len(found)} detections, {len(kept)} sources + 2 off-footprint rows")


if __name__ == "__main__":
    main()
