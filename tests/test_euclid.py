"""Euclid Q1 cutouts against a local server speaking IRSA's protocol (SIA v2 over the MER
mosaics, then IBE cutouts) and serving real FITS pixels: every object ends up in the dataset or
in its failures, faults are retried, only the science mosaics are cut, and a bad band or layer
stops before any run exists."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from survey_servers import EUCLID_MAGZERO, EuclidServer, served_key
from test_survey_sources import CATALOG, FAST, OFF, dataset_of, found_in_sky

import hyrax_mlops as hm
from hyrax_mlops.errors import ConfigError


def euclid_config(server: EuclidServer, **extra):
    return hm.load_config(None, {**FAST, "download.source": "euclid",
                                 "download.catalog": str(CATALOG),
                                 "download.euclid.url": server.url, **extra})


def test_euclid_sia_then_ibe_cutouts_with_faults(store):
    faults = ["500", "429", "reset", "truncated", "corrupt", "slow"]
    with EuclidServer(faults=faults, slow_s=0.2) as server:
        cfg = euclid_config(server, **{"download.bands": ["VIS", "H", "DECAM_r"]})
        run = hm.download(cfg)
        served = dict(server.served)
    catalog = pd.read_csv(CATALOG)
    data = dataset_of(run.run_id)
    assert data.bands == ["VIS", "NIR-H", "DECAM_r"]
    assert data.shape == (3, 16, 16)
    assert set(data.ids) == set(catalog.object_id) - OFF
    failures = {f["object_id"]: f["reason"] for f in data.manifest["failures"]}
    assert failures == {oid: "no_data" for oid in OFF}
    on_sky = catalog[~catalog.object_id.isin(OFF)]
    for row in on_sky.itertuples():  # each science cutout fetched once, faults or not
        for band in ("VIS_VIS", "NISP_H", "DECAM_r"):
            assert served.get(served_key(band, row.ra, row.dec)) == 1
    assert sum(served.values()) == 3 * len(on_sky)  # never a noise or flag map
    assert found_in_sky(data.images([0])[0, 0]) and found_in_sky(data.images([5])[0, 2])
    assert data.manifest["source"]["magzero"] == {"DECAM_r": EUCLID_MAGZERO,
                                                  "NIR-H": EUCLID_MAGZERO,
                                                  "VIS": EUCLID_MAGZERO}
    m = mlflow.get_run(run.run_id).data.metrics
    assert m["download.locate.done"] == len(catalog)
    assert m["download.cutouts.done"] == 3 * len(on_sky)
    assert hm.download(cfg).reused  # the same download again: the service is not asked


def test_euclid_bad_band_or_layer_stops_before_any_run(store):
    with pytest.raises(ConfigError, match="not a Euclid MER band.*VIS, NIR-Y, NIR-J, NIR-H"):
        hm.download(None, {**FAST, "download.source": "euclid",
                           "download.catalog": str(CATALOG), "download.bands": ["VISIBLE"]})
    with pytest.raises(ConfigError, match="no mask layer"):
        hm.download(None, {**FAST, "download.source": "euclid",
                           "download.catalog": str(CATALOG),
                           "download.layers": ["image", "mask"]})
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_euclid_default_bands_and_listing():
    from hyrax_mlops.config import load_config
    from hyrax_mlops.sources.survey import survey_source

    cfg = load_config(None, {"download.source": "euclid",
                             "download.catalog": str(Path(CATALOG))})
    assert survey_source(cfg.download).bands == ["VIS", "NIR-Y", "NIR-J", "NIR-H"]
    assert cfg.download.euclid.collection == "euclid_DpdMerBksMosaic"
