"""Regenerate the crossmatch test tables from the full real catalogs (see README.md).

    python tests/data/crossmatch/make_subsets.py /path/to/real_tabular
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import astropy.units as u
import pandas as pd
from astropy.coordinates import SkyCoord

HERE = Path(__file__).parent
N_HOSTED, N_UNRELATED_TRANSIENTS, N_UNRELATED_GALAXIES = 300, 100, 200
FAR_ARCSEC = 600.0  # unrelated transients: no GWGC galaxy at all within this distance


def galaxy_key(name: str) -> str:
    """'NGC 7068' and 'NGC7068', 'PGC 65535' and 'PGC065535' name the same galaxy."""
    s = str(name).upper().replace(" ", "").replace("_", "")
    m = re.match(r"^(PGC|UGC|NGC|IC|UGCA)0*(\d+)([A-Z]?)$", s)
    return f"{m[1]}{int(m[2])}{m[3]}" if m else s


def main(src: Path) -> None:
    oac = pd.read_csv(src / "oac_transients.csv.gz")
    gwgc = pd.read_csv(src / "gwgc_galaxies.csv.gz")
    gwgc = gwgc.assign(key=gwgc["NED_name"].map(galaxy_key)).drop_duplicates("key")
    oac = oac.dropna(subset=["ra", "dec"])
    hosted = oac.dropna(subset=["host"])
    hosted = hosted[hosted["host"].map(galaxy_key).isin(set(gwgc["key"]))]
    # hosts with several transients first (they exercise one-to-one matching), then random
    counts = hosted["host"].map(galaxy_key).value_counts()
    multi = hosted[hosted["host"].map(galaxy_key).map(counts) >= 2]
    multi = multi[multi["host"].map(galaxy_key).isin(counts.index[counts >= 2][:30])]
    rest = hosted.drop(multi.index)
    hosted = pd.concat([multi, rest.sample(N_HOSTED - len(multi), random_state=0)])
    everywhere = SkyCoord(gwgc["RAJ2000"].to_numpy() * u.deg, gwgc["DEJ2000"].to_numpy() * u.deg)
    others = oac[oac["host"].isna()]
    _, d2d, _ = SkyCoord(others["ra"].to_numpy() * u.deg, others["dec"].to_numpy() * u.deg) \
        .match_to_catalog_sky(everywhere)
    far = others[d2d.arcsec > FAR_ARCSEC].sample(N_UNRELATED_TRANSIENTS, random_state=0)
    transients = pd.concat([hosted, far]).sample(frac=1, random_state=0)
    hosts = gwgc[gwgc["key"].isin(set(hosted["host"].map(galaxy_key)))]
    unrelated = gwgc.drop(hosts.index).sample(N_UNRELATED_GALAXIES, random_state=0)
    galaxies = pd.concat([hosts, unrelated]).sample(frac=1, random_state=0)
    cols = ["name", "ra", "dec", "claimedtype", "redshift", "host", "maxappmag"]
    transients[cols].to_csv(HERE / "oac_transients.csv", index=False)
    galaxies[["NED_name", "RAJ2000", "DEJ2000", "maj", "min", "Dist"]].to_csv(
        HERE / "gwgc_galaxies.csv", index=False)
    print(f"{len(transients)} transients ({len(hosted)} with a GWGC host), "
          f"{len(galaxies)} galaxies ({len(hosts)} hosts)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
