"""A run's results as DataFrames and objects looked up by id, for notebooks (issue 18): every
table by name without an artifact path, ids matched as the exact text, and the pixels or the
series of each object beside its catalog row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_user_data import TEXT_IDS, sky_stamps, write_catalog  # noqa: F401 - a fixture

import hyrax_mlops as hm
from hyrax_mlops.data.dataset import Dataset
from hyrax_mlops.errors import DataError
from hyrax_mlops.tracking import ArtifactCache

from conftest import DATA, N_DEMO


def test_a_pipeline_run_s_tables_by_name(demo_store):
    result, cfg = demo_store
    tables = hm.results(result.run_id)
    assert {"catalog", "embeddings", "umap_2d", "umap_3d", "pca_2d", "pca_3d"} <= set(tables)
    catalog = tables["catalog"]
    assert len(catalog) == N_DEMO and catalog["object_id"].str.startswith("XDF").all()
    umap = tables["umap_2d"]
    assert list(umap.columns[:3]) == ["object_id", "x", "y"]
    assert set(umap["object_id"]) == set(catalog["object_id"])
    embedding = tables["embeddings"]["embedding"].iloc[0]
    assert np.asarray(embedding).shape == (cfg.model.latent_dim,)
    with pytest.raises(KeyError, match="has no table 'outlier'; its tables: .*umap_2d"):
        tables["outlier"]  # noqa: B018
    # one stage's run: its own tables, then those of the runs it was made from
    of_reduce = hm.results(result["reduce"].run_id)
    assert list(of_reduce)[:4] == ["pca_2d", "pca_3d", "umap_2d", "umap_3d"]
    assert {"embeddings", "catalog"} <= set(of_reduce)
    curve = tables["history"]  # the train run's metrics per epoch
    assert list(curve["step"]) == [0, 1, 2] and curve["val_loss"].notna().all()
    of_dataset = hm.results(result["dataset"].run_id)
    assert "catalog" in of_dataset and "embeddings" not in of_dataset  # nothing downstream


def test_lookup_gives_rows_in_the_order_asked_with_their_stamps(demo_store):
    result, cfg = demo_store
    found = hm.lookup(result["index"].run_id, ["XDF00007", "XDF00003"])
    assert list(found["object_id"]) == ["XDF00007", "XDF00003"]
    data = Dataset(ArtifactCache.of(cfg).fetch(result["dataset"].run_id, "dataset"))
    rows = [list(data.ids).index(i) for i in ("XDF00007", "XDF00003")]
    np.testing.assert_array_equal(np.stack(found["image"]), data.images(rows))
    assert found["flux"].tolist() == data.catalog.set_index("object_id").loc[
        ["XDF00007", "XDF00003"], "flux"].tolist()
    with pytest.raises(DataError, match=r"1 of 2 id\(s\) are not objects of dataset run .*: "
                                        r"XDF99999 \(ids are matched as text\)"):
        hm.lookup(result["infer"].run_id, ["XDF00001", "XDF99999"])


def test_lookup_keeps_a_user_s_zero_padded_ids_and_reads_their_fits(store, sky_stamps):  # noqa: F811
    """A user's catalog of only object_id,file with ids such as "00042": looked up by the same
    text, the stamp is the FITS file's pixels; "42" is another id."""
    from astropy.io import fits

    folder, names, _ = sky_stamps
    write_catalog("csv", store / "catalog.csv", TEXT_IDS, names)
    run = hm.ingest(None, {"ingest.cutouts_dir": str(folder),
                           "ingest.catalog": str(store / "catalog.csv")})
    found = hm.lookup(run.run_id, ["00042", "0007"])
    assert list(found["object_id"]) == ["00042", "0007"]
    for oid, image in zip(found["object_id"], found["image"], strict=True):
        pixels = fits.getdata(folder / names[TEXT_IDS.index(oid)]).astype(np.float32)
        np.testing.assert_array_equal(image[0], pixels)
    with pytest.raises(DataError, match="ids are matched as text; the dataset has '00042'"):
        hm.lookup(run.run_id, 42)  # one id, an int: its text is "42"
    assert list(hm.results(run.run_id)["wcs"]["object_id"]) == \
        [i.strip() for i in TEXT_IDS]  # the dataset's WCS table, ids as written


def test_lookup_gives_each_object_s_light_curve_and_spectrum(store):
    catalog = DATA / "multimodal" / "objects.csv"
    run = hm.ingest(None, {"ingest.catalog": str(catalog)})
    objects = pd.read_csv(catalog)
    with_spectrum = objects.dropna(subset=["spectrum_file"]).iloc[0]
    with_lightcurve = objects.dropna(subset=["lightcurve_file"]).iloc[0]
    found = hm.lookup(run.run_id, [with_spectrum["object_id"], with_lightcurve["object_id"]])
    spectrum, lightcurve = found["spectrum"].iloc[0], found["lightcurve"].iloc[1]
    assert {"wave", "flux"} <= set(spectrum.columns) and len(spectrum) > 100
    assert {"time", "band", "mag"} <= set(lightcurve.columns) and len(lightcurve) > 5
    if pd.isna(with_spectrum["lightcurve_file"]):  # an object without one has none
        assert found["lightcurve"].iloc[0] is None
