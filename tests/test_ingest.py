"""ingest and the xdf source on real XDF stamps, including the broken inputs users have."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

import hyrax_mlops as hm
from hyrax_mlops.config import load_config
from hyrax_mlops.data.dataset import Dataset
from hyrax_mlops.sources.xdf import fetch_xdf

from conftest import DATA

STAMPS = DATA / "xdf_fits" / "stamps"
CATALOG = DATA / "xdf_fits" / "catalog.csv"


def real_cube(oid: str) -> np.ndarray:
    return fits.getdata(STAMPS / f"{oid}.fits").astype(np.float32)


def load_dataset(run_id: str) -> tuple[Dataset, dict]:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dataset")
    data = Dataset(local)
    return data, data.manifest


@pytest.fixture
def user_dir(store):
    """A user's folder: 12 real stamps, plus one corrupt, one cropped, one with NaNs and one
    catalog row whose file is missing."""
    cut = store / "cutouts"
    shutil.copytree(STAMPS, cut)
    catalog = pd.read_csv(CATALOG)[["object_id", "flux", "r_half"]]
    (cut / "BROKEN.fits").write_bytes((STAMPS / "XDF00001.fits").read_bytes()[:3000])
    fits.PrimaryHDU(real_cube("XDF00002")[:, :32, :32]).writeto(cut / "CROPPED.fits")
    nan = real_cube("XDF00003")
    nan[1, 10:12, 20:25] = np.nan
    fits.PrimaryHDU(nan).writeto(cut / "HOLES.fits")
    extra = pd.DataFrame({"object_id": ["BROKEN", "CROPPED", "HOLES", "GONE"],
                          "flux": [1.0, 2.0, 3.0, 4.0], "r_half": [1.0, 1.0, 1.0, 1.0]})
    pd.concat([catalog, extra]).to_csv(store / "catalog.csv", index=False)
    return store


def test_bad_files_are_listed_in_the_manifest_and_the_rest_ingested(user_dir, capsys):
    cfg = load_config(None, {"ingest.cutouts_dir": "cutouts", "ingest.catalog": "catalog.csv"})
    run = hm.ingest(cfg)
    data, manifest = load_dataset(run.run_id)
    assert manifest["counts"]["requested"] == 16 and manifest["counts"]["ingested"] == 12
    reasons = {f["object_id"]: f["reason"] for f in manifest["failures"]}
    assert reasons == {"BROKEN": "unreadable", "CROPPED": "wrong_shape",
                       "HOLES": "nan_pixels", "GONE": "missing_file"}
    assert "shape [3, 32, 32], expected [3, 64, 64]" in {
        f["detail"] for f in manifest["failures"]}
    err = capsys.readouterr().err
    assert "4 failed" in err and "BROKEN (unreadable" in err  # reported, not just recorded
    assert mlflow.get_run(run.run_id).data.metrics["n_failed"] == 4
    # what was ingested is the real pixels, with the catalog columns
    assert list(data.ids) == [f"XDF{i:05d}" for i in range(1, 13)]
    np.testing.assert_array_equal(data.images([4])[0], real_cube("XDF00005"))
    assert data.catalog.loc[0, "flux"] == pytest.approx(272582.74)
    assert data.verify() == []

    zeroed = hm.ingest(cfg, {"ingest.nan_policy": "zero"})
    data, manifest = load_dataset(zeroed.run_id)
    assert manifest["counts"]["ingested"] == 13 and "HOLES" in set(data.ids)
    assert manifest["source"]["nan_zeroed_objects"] == 1
    assert np.isfinite(data.images(np.arange(len(data)))).all()


def test_changed_input_files_are_not_served_from_the_cache(user_dir):
    cfg = load_config(None, {"ingest.cutouts_dir": "cutouts", "ingest.catalog": "catalog.csv"})
    first = hm.ingest(cfg)
    assert hm.ingest(cfg).reused
    fits.PrimaryHDU(real_cube("XDF00004")).writeto(user_dir / "cutouts" / "GONE.fits")
    second = hm.ingest(cfg)
    assert not second.reused and second.run_id != first.run_id
    assert load_dataset(second.run_id)[1]["counts"]["ingested"] == 13


def test_one_hdu_per_band_with_a_fits_catalog(store):
    cut = store / "bands"
    cut.mkdir()
    rows = pd.read_csv(CATALOG).head(5)
    for oid in rows["object_id"]:
        cube = real_cube(oid)
        hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(cube[i], name=b)
                                      for i, b in enumerate("RGB")]
        fits.HDUList(hdus).writeto(cut / f"{oid}_cut.fits")
    table = Table.from_pandas(rows[["object_id", "flux"]])
    table["path"] = [f"{oid}_cut.fits" for oid in rows["object_id"]]
    table.write(store / "cat.fits")
    run = hm.ingest(None, {"ingest.cutouts_dir": str(cut), "ingest.catalog": "cat.fits",
                           "ingest.file_column": "path", "ingest.bands": ["R", "G", "B"]})
    data, manifest = load_dataset(run.run_id)
    assert manifest["counts"]["failed"] == 0 and manifest["bands"] == ["R", "G", "B"]
    np.testing.assert_array_equal(data.images([2])[0], real_cube("XDF00003"))

    with pytest.raises(hm.errors.DataError, match="no usable objects.*unreadable"):
        hm.ingest(None, {"ingest.cutouts_dir": str(cut), "ingest.catalog": "cat.fits",
                         "ingest.file_column": "path", "ingest.bands": ["R", "I"]})
    failed = mlflow.search_runs(experiment_names=["hyrax"], filter_string="status = 'FAILED'")
    assert len(failed) == 1 and "no usable objects" in failed["tags.hyrax.error"].iloc[0]
    manifest = json.loads(mlflow.artifacts.load_text(
        f"runs:/{failed['run_id'].iloc[0]}/dataset/manifest.json"))
    assert manifest["counts"]["failed"] == 5  # recorded even though the run failed
    assert all("no HDU named 'I'" in f["detail"] for f in manifest["failures"])


def test_a_catalog_without_object_id_is_refused_before_reading_cutouts(store):
    pd.DataFrame({"id": ["a"]}).to_csv(store / "c.csv", index=False)
    (store / "cut").mkdir()
    with pytest.raises(hm.errors.DataError, match="no 'object_id' column.*Fix"):
        hm.ingest(None, {"ingest.cutouts_dir": "cut", "ingest.catalog": "c.csv"})


def test_xdf_source_reproduces_the_published_stamps(tmp_path):
    """Detection at run time gives the same brightest objects, pixel for pixel."""
    cfg = load_config(None, {"download.limit": 12}).download
    manifest = fetch_xdf(cfg, tmp_path / "ds")
    data = Dataset(tmp_path / "ds")
    reference = pd.read_csv(CATALOG)
    assert manifest["counts"]["ingested"] == 12 and manifest["source"]["detections"] > 1400
    assert list(data.ids) == list(reference["object_id"])
    for row, oid in enumerate(reference["object_id"]):
        np.testing.assert_array_equal(data.images([row])[0], real_cube(oid))
    np.testing.assert_allclose(data.catalog["flux"], reference["flux"], rtol=1e-4)
    np.testing.assert_allclose(data.catalog["r_half"], reference["r_half"], rtol=1e-3)
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["source"]["wcs"] is False


def test_single_band_images_with_a_parquet_catalog(store):
    cut = store / "grey"
    cut.mkdir()
    rows = pd.read_csv(CATALOG).head(4)
    for oid in rows["object_id"]:
        fits.PrimaryHDU(real_cube(oid)[1]).writeto(cut / f"{oid}.fits")  # 2D: the G plane
    rows[["object_id", "flux"]].to_parquet(store / "cat.parquet")
    run = hm.ingest(None, {"ingest.cutouts_dir": "grey", "ingest.catalog": "cat.parquet"})
    data, manifest = load_dataset(run.run_id)
    assert manifest["shape"] == [1, 64, 64] and manifest["counts"]["ingested"] == 4
    np.testing.assert_array_equal(data.images([3])[0, 0], real_cube("XDF00004")[1])
