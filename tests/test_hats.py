"""HATS catalogs (built with hats-import from the real catalogs in tests/data, see
tests/data/hats/make_hats.py) wherever a catalog is named: the object list of a survey
download, an ingest catalog, a crossmatch reference; with a cone or a box and a column list
pushed down to LSDB, so partitions outside the region are never opened."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from survey_servers import EuclidServer
from test_survey_sources import FAST, OFF, dataset_of

import hyrax_mlops as hm
from hyrax_mlops.data.catalogs import read_catalog, read_table
from hyrax_mlops.errors import ConfigError, DataError

from conftest import DATA

HATS = DATA / "hats"
TRANSIENTS = HATS / "oac_transients"
CONE = (172.1, 58.5, 5 * 3600.0)  # ra, dec, radius in arcsec


def within(table: pd.DataFrame, ra: float, dec: float, radius_arcsec: float) -> set[str]:
    sep = SkyCoord(table["ra"].to_numpy() * u.deg, table["dec"].to_numpy() * u.deg).separation(
        SkyCoord(ra * u.deg, dec * u.deg))
    return set(table.loc[sep.arcsec <= radius_arcsec, "name"])


def test_a_hats_catalog_reads_like_the_csv_it_was_built_from():
    csv = pd.read_csv(DATA / "sky" / "catalog.csv", dtype={"object_id": str})
    hats = read_catalog(HATS / "sky_objects").set_index("object_id").loc[csv["object_id"]]
    assert all(isinstance(i, str) for i in hats.index)
    np.testing.assert_allclose(hats["ra"], csv["ra"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(hats["dec"], csv["dec"], rtol=0, atol=1e-12)
    assert "_healpix_29" not in hats.columns


def test_a_cone_and_columns_are_pushed_down_not_applied_after_reading(tmp_path):
    import lsdb

    copy = tmp_path / "oac_transients"
    shutil.copytree(TRANSIENTS, copy)
    ra, dec, r = CONE
    all_pixels = lsdb.open_catalog(copy).get_healpix_pixels()
    cone_pixels = set(lsdb.open_catalog(copy, search_filter=lsdb.ConeSearch(ra, dec, r))
                      .get_healpix_pixels())
    assert 1 <= len(cone_pixels) < len(all_pixels) / 3
    for pixel in all_pixels:  # every partition the cone does not touch is gone
        if pixel not in cone_pixels:
            (copy / "dataset" / f"Norder={pixel.order}" / f"Dir={pixel.pixel // 10000 * 10000}"
             / f"Npix={pixel.pixel}.parquet").unlink()
    spec = f"{copy}?columns=name,ra,dec&cone={ra},{dec},{r}"
    got = read_table(spec)
    assert list(got.columns) == ["name", "ra", "dec"]
    expected = within(pd.read_csv(DATA / "crossmatch" / "oac_transients.csv"), ra, dec, r)
    assert set(got["name"]) == expected and len(expected) >= 5
    with pytest.raises(DataError, match="cannot be read"):
        read_table(copy)  # the whole catalog needs the partitions deleted above
    box = read_table(f"{TRANSIENTS}?box=170,175,50,60&columns=name,ra,dec")
    assert box["ra"].between(170, 175).all() and box["dec"].between(50, 60).all()
    assert len(box) > 0


def test_bad_hats_options_stop_before_any_run(store):
    base = {**FAST, "download.source": "euclid", "download.euclid.url": "http://127.0.0.1:9"}
    with pytest.raises(ConfigError, match="unknown HATS option.*radius"):
        hm.download(None, {**base, "download.catalog": f"{HATS / 'sky_objects'}?radius=3"})
    with pytest.raises(ConfigError, match="cone=.*RA,DEC,RADIUS_ARCSEC"):
        hm.download(None, {**base, "download.catalog": f"{HATS / 'sky_objects'}?cone=3.5,-30"})
    with pytest.raises(ConfigError, match="select from a HATS catalog"):
        hm.download(None, {**base, "download.catalog":
                           f"{DATA / 'sky' / 'catalog.csv'}?columns=ra"})
    with pytest.raises(ConfigError, match="not an existing file or HATS catalog"):
        hm.download(None, {**base, "download.catalog": str(HATS / "nope")})
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_survey_download_takes_its_object_list_from_a_hats_cone(store):
    catalog = pd.read_csv(DATA / "sky" / "catalog.csv")
    ra, dec = 3.58, -30.39
    inside = catalog[SkyCoord(catalog.ra.to_numpy() * u.deg, catalog.dec.to_numpy() * u.deg)
                     .separation(SkyCoord(ra * u.deg, dec * u.deg)).arcsec <= 60]
    assert 3 <= len(inside) < len(catalog) and not set(inside.object_id) & OFF
    with EuclidServer() as server:
        run = hm.download(None, {**FAST, "download.source": "euclid",
                                 "download.euclid.url": server.url, "download.bands": ["VIS"],
                                 "download.catalog": f"{HATS / 'sky_objects'}?cone={ra},{dec},60"})
    data = dataset_of(run.run_id)
    assert set(data.ids) == set(inside.object_id)
    assert data.manifest["failures"] == []
    assert "sky_objects" in mlflow.get_run(run.run_id).info.run_name


def test_ingest_reads_a_hats_catalog_and_the_files_beside_it(store):
    base = {"tracking.experiment": "test", "data.spectrum_grid": [3600.0, 10000.0, 256],
            "data.lightcurve_points": 64}
    run = hm.ingest(None, {**base, "ingest.catalog": str(DATA / "multimodal" / "objects_hats")})
    cfg = hm.load_config(None, base)
    root = hm.tracking.ArtifactCache.of(cfg).fetch(run.run_id, "dataset")
    manifest = json.loads((root / "manifest.json").read_text())
    csv = pd.read_csv(DATA / "multimodal" / "objects.csv")
    placed = csv[csv.ra.notna()]
    ids = pd.read_parquet(root / "catalog.parquet")["object_id"]
    assert set(ids) == set(placed.object_id)
    assert manifest["counts"]["with_spectrum"] == placed.spectrum_file.notna().sum()
    assert manifest["counts"]["with_lightcurve"] == placed.lightcurve_file.notna().sum()
    assert manifest["failures"] == []


def test_a_hats_reference_crossmatches_like_its_csv(store):
    from hyrax_mlops.analysis.crossmatch import CrossmatchConfig, crossmatch_table, read_reference
    from hyrax_mlops.stages import analyse

    csv_ref = read_reference(DATA / "crossmatch" / "oac_transients.csv", "ra", "dec",
                             "claimedtype")
    hats_ref = read_reference(TRANSIENTS, "ra", "dec", "claimedtype")
    rng = np.random.default_rng(0)
    rows = csv_ref.sample(40, random_state=1)
    objects = pd.DataFrame({"object_id": [f"O{i}" for i in range(40)],
                            "ra": rows.ra.to_numpy() + rng.normal(0, 1e-4, 40),
                            "dec": rows.dec.to_numpy() + rng.normal(0, 1e-4, 40)})
    cfg = CrossmatchConfig(reference="x", match_radius_arcsec=2.0, reference_label="claimedtype")
    a = crossmatch_table(objects.object_id.to_numpy(), objects, csv_ref, cfg)
    b = crossmatch_table(objects.object_id.to_numpy(), objects, hats_ref, cfg)
    assert a["matched"].all() and b["matched"].all()
    # OAC lists some transients twice at one position (iPTF13bvn, iptf13bvn): either is nearest
    assert [i.lower() for i in b["ref_id"]] == [i.lower() for i in rows.name]
    np.testing.assert_allclose(b["separation_arcsec"], a["separation_arcsec"], atol=1e-9)
    assert list(a["ref_label"]) == list(b["ref_label"])
    checked = analyse.check(hm.load_config(None, {"analyse.analyses": ["crossmatch"],
                                                  "analyse.reference": str(TRANSIENTS)}))
    assert checked == str(TRANSIENTS)
