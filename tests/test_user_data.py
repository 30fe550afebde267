"""A user's own stamps with a WCS and a catalog of only `object_id` and `file`: ids kept as the
exact text written (64-bit survey ids above 2**53, leading zeros) from CSV, Parquet (int64 and
string columns) and FITS tables; ra/dec taken from each stamp's WCS centre (ICRS); the WCS kept
in dataset/wcs.parquet; and catalog positions that disagree with the WCS reported, not
overwritten.

The stamps are cut at test time, with astropy's Cutout2D, from the real HST Frontier Fields
images of Abell 2744 in tests/data/sky (FK5 J2000 TAN WCS, 0.06"/px)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import Table
from astropy.wcs import WCS

import hyrax_mlops as hm
from hyrax_mlops.data.dataset import Dataset

from conftest import DATA

SKY = DATA / "sky"
SIZE = 24  # px; every source in sky/catalog.csv is at least 12 px from its image's edge
# 64-bit HSC/Rubin-style ids (two above 2**53, where a float loses digits) and plain ones
INT_IDS = [36411448540270969, 36411448540270971, 2 ** 53 + 1, 42, 7, 1234567890123]
TEXT_IDS = ["36411448540270969", "00042", "9007199254740993", "0007", "A2744-x", "  00001"]


@pytest.fixture(scope="module")
def sky_stamps(tmp_path_factory):
    """Six real stamps (24x24, float32, each with its WCS header) cut around the first six
    sources of sky/catalog.csv; returns (folder, file names, the sources' rows)."""
    folder = tmp_path_factory.mktemp("stamps")
    sources = pd.read_csv(SKY / "catalog.csv").dropna(subset=["image"]).head(len(INT_IDS))
    names = []
    for i, row in enumerate(sources.itertuples()):
        with fits.open(SKY / row.image) as hdul:
            wcs = WCS(hdul[0].header)
            position = SkyCoord(row.ra * u.deg, row.dec * u.deg, frame="fk5")
            cut = Cutout2D(hdul[0].data, position, SIZE, wcs=wcs, mode="strict")
        name = f"stamp_{i}.fits"
        fits.PrimaryHDU(cut.data.astype(np.float32), header=cut.wcs.to_header()).writeto(
            folder / name)
        names.append(name)
    return folder, names, sources.reset_index(drop=True)


def centre_icrs(path) -> tuple[float, float]:
    """What astropy says the stamp's centre pixel is, in ICRS degrees."""
    with fits.open(path) as hdul:
        ny, nx = hdul[0].data.shape
        sky = WCS(hdul[0].header).pixel_to_world((nx - 1) / 2, (ny - 1) / 2).icrs
    return float(sky.ra.deg), float(sky.dec.deg)


def ingest(catalog_path, folder) -> tuple[Dataset, dict]:
    run = hm.ingest(None, {"ingest.cutouts_dir": str(folder), "ingest.catalog": str(catalog_path),
                           "tracking.experiment": "test"})
    local = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="dataset")
    data = Dataset(local)
    return data, data.manifest


def raw_ids(data: Dataset) -> list:
    """object_id exactly as stored in catalog.parquet (no pandas conversion in between)."""
    table = pq.read_table(data.root / "catalog.parquet")
    assert pa.types.is_string(table.schema.field("object_id").type) or \
        pa.types.is_large_string(table.schema.field("object_id").type)
    return table.column("object_id").to_pylist()


def write_catalog(kind: str, path, ids, files) -> None:
    if kind == "csv":
        with open(path, "w") as fh:  # written by hand: the text in the file is what we assert
            rows = "".join(f"{i},{f}\n" for i, f in zip(ids, files, strict=True))
            fh.write("object_id,file\n" + rows)
    elif kind == "parquet-int64":
        pq.write_table(pa.table({"object_id": pa.array(ids, pa.int64()), "file": files}), path)
    elif kind == "parquet-string":
        pq.write_table(pa.table({"object_id": pa.array(ids, pa.string()), "file": files}), path)
    elif kind == "fits-int64":
        Table({"object_id": np.array(ids, np.int64), "file": files}).write(path)


@pytest.mark.parametrize("kind,suffix,ids", [
    ("csv", "csv", TEXT_IDS),
    ("parquet-int64", "parquet", INT_IDS),
    ("parquet-string", "parquet", TEXT_IDS),
    ("fits-int64", "fits", INT_IDS),
])
def test_ids_are_the_exact_text_and_positions_come_from_the_wcs(store, sky_stamps, kind,
                                                                suffix, ids):
    folder, names, sources = sky_stamps
    write_catalog(kind, store / f"catalog.{suffix}", ids, names)
    data, manifest = ingest(store / f"catalog.{suffix}", folder)

    expected = [str(i).strip() for i in ids]  # ints: their decimal text; text: as written
    assert raw_ids(data) == expected
    assert "36411448540270969" in expected and set(data.ids) == set(expected)
    assert manifest["counts"]["ingested"] == len(ids) and manifest["failures"] == []
    if kind in ("csv", "parquet-string"):
        assert "00042" in raw_ids(data) and "0007" in raw_ids(data)

    # ra/dec: the ICRS centre of each stamp's WCS, as astropy computes it
    assert manifest["counts"]["radec_from_wcs"] == len(ids)
    assert manifest["counts"]["without_wcs"] == 0 and manifest["source"]["radec"] == "wcs"
    for oid, name in zip(expected, names, strict=True):
        row = data.catalog.set_index("object_id").loc[oid]
        ra, dec = centre_icrs(folder / name)
        assert row["ra"] == pytest.approx(ra, abs=1e-6)
        assert row["dec"] == pytest.approx(dec, abs=1e-6)
    # ... which is where the real source is (the cut is centred on it, to a pixel: 0.06")
    measured = SkyCoord(data.catalog["ra"].to_numpy() * u.deg,
                        data.catalog["dec"].to_numpy() * u.deg)
    truth = SkyCoord(sources["ra"].to_numpy() * u.deg, sources["dec"].to_numpy() * u.deg,
                     frame="fk5").icrs
    assert np.all(measured.separation(truth).arcsec < 0.1)

    # the WCS of every stamp is kept, as header text, and listed in the manifest
    headers = data.wcs_headers()
    assert list(headers["object_id"]) == expected
    assert manifest["wcs"]["file"] == "wcs.parquet" and manifest["wcs"]["rows"] == len(ids)
    assert "wcs.parquet" in {p.name for p in data.root.iterdir()}
    for oid, name in zip(expected, names, strict=True):
        text = headers.set_index("object_id").loc[oid, "wcs_header"]
        assert "RA---TAN" in text and "DEC--TAN" in text
        original = WCS(fits.getheader(folder / name))
        kept = data.wcs(oid)
        for x, y in ((0, 0), (11.5, 11.5), (23, 5)):
            a, b = original.pixel_to_world(x, y), kept.pixel_to_world(x, y)
            assert a.separation(b).arcsec < 1e-6


def test_a_catalog_position_that_disagrees_with_the_wcs_is_reported_and_kept(
        store, sky_stamps, capsys):
    folder, names, sources = sky_stamps
    catalog = pd.DataFrame({"object_id": TEXT_IDS, "file": names,
                            "ra": sources["ra"], "dec": sources["dec"]})
    off = 3  # this object's catalog Dec is 10" north of the source
    catalog.loc[off, "dec"] = sources.loc[off, "dec"] + 10 / 3600
    catalog.to_csv(store / "catalog.csv", index=False)
    data, manifest = ingest(store / "catalog.csv", folder)

    assert manifest["counts"]["wcs_disagreements"] == 1
    [reported] = manifest["wcs_disagreements"]
    assert reported["object_id"] == "0007"  # TEXT_IDS[3], leading zeros kept
    assert reported["sep_arcsec"] == pytest.approx(10.0, abs=0.1)
    assert reported["tolerance_arcsec"] == pytest.approx(1.0)
    err = capsys.readouterr().err
    assert "1 object(s) whose catalog ra/dec" in err and "0007 (" in err
    assert "catalog's values are kept" in err
    # the catalog's values stay; the others agree with their stamps and are not reported
    kept = data.catalog.set_index("object_id")
    assert kept.loc["0007", "dec"] == pytest.approx(catalog.loc[off, "dec"], abs=1e-12)
    assert kept.loc["00042", "ra"] == pytest.approx(sources.loc[1, "ra"], abs=1e-12)
    assert manifest["counts"]["radec_from_wcs"] == 0 and manifest["source"]["radec"] == "catalog"


def test_stamps_without_a_wcs_are_counted_and_have_no_position(store, sky_stamps):
    folder, names, _ = sky_stamps
    mixed = store / "mixed"
    mixed.mkdir()
    for i, name in enumerate(names):
        with fits.open(folder / name) as hdul:
            header = hdul[0].header if i % 2 == 0 else None  # odd stamps: pixels only
            fits.PrimaryHDU(hdul[0].data, header=header).writeto(mixed / name)
    write_catalog("csv", store / "c.csv", TEXT_IDS, names)
    data, manifest = ingest(store / "c.csv", mixed)
    assert manifest["counts"]["without_wcs"] == 3 and manifest["counts"]["radec_from_wcs"] == 3
    positions = data.catalog.set_index("object_id")
    for i, oid in enumerate(str(t).strip() for t in TEXT_IDS):
        if i % 2:
            assert np.isnan(positions.loc[oid, "ra"]) and data.wcs(oid) is None
        else:
            assert positions.loc[oid, "ra"] == pytest.approx(centre_icrs(mixed / names[i])[0],
                                                             abs=1e-6)
    assert json.loads((data.root / "manifest.json").read_text())["wcs"]["rows"] == 3
