"""Real light curves and spectra: ingested into the dataset format, served as padded tensors
with masks, and classified by the fusion model, whatever modalities each object has."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm
from hyrax_mlops.data.provider import DataProvider
from hyrax_mlops.data.series import read_lightcurve, read_spectrum
from hyrax_mlops.tracking import ArtifactCache

from conftest import DATA

MM = DATA / "multimodal"
BASE = {"tracking.experiment": "test", "ingest.catalog": str(MM / "objects.csv"),
        "data.label_column": "coarse_class", "data.split": [0.6, 0.2, 0.2],
        "data.lightcurve_points": 64, "data.spectrum_grid": [3600.0, 10000.0, 256]}


@pytest.fixture
def multimodal(store):
    run = hm.ingest(None, BASE)
    return run.run_id, hm.load_config(None, BASE)


def test_ingest_reads_each_modality_and_records_what_it_could_not(store, tmp_path):
    catalog = pd.read_csv(MM / "objects.csv")
    catalog.loc[catalog["object_id"] == "CSP_SN2005A", "lightcurve_file"] = \
        "lightcurves/NOT_THERE.csv"  # the object stays; its light curve is a recorded failure
    catalog.to_csv(tmp_path / "objects.csv", index=False)
    for sub in ("lightcurves", "spectra"):  # copies: a symlink out of the catalog's folder
        (tmp_path / sub).mkdir()            # would be refused (outside_folder)
        for f in (MM / sub).iterdir():
            (tmp_path / sub / f.name).write_bytes(f.read_bytes())
    run = hm.ingest(None, {**BASE, "ingest.catalog": str(tmp_path / "objects.csv")})
    cfg = hm.load_config(None, BASE)
    root = ArtifactCache.of(cfg).fetch(run.run_id, "dataset")
    manifest = __import__("json").loads((root / "manifest.json").read_text())
    assert manifest["modalities"] == ["lightcurve", "spectrum"]
    assert manifest["counts"]["with_lightcurve"] == 35 and manifest["counts"]["with_spectrum"] == 7
    assert [f["reason"] for f in manifest["failures"]] == ["missing_lightcurve"]
    lcs = pd.read_parquet(root / "lightcurves.parquet")
    one = read_lightcurve(MM / "lightcurves" / "CSP_SN2004ef.csv")
    assert (lcs["object_id"] == "CSP_SN2004ef").sum() == len(one)
    # SNLS fluxes with a zero point become magnitudes
    snls = lcs[lcs["object_id"].str.contains("SNLS")]
    raw = pd.read_csv(next((MM / "lightcurves").glob("SNLS*")))
    raw = raw[raw["flux"] > 0]
    np.testing.assert_allclose(np.sort(snls["mag"]), np.sort(
        raw["zp"] - 2.5 * np.log10(raw["flux"])), rtol=1e-9)


def test_series_become_padded_tensors_with_masks(multimodal):
    dataset, cfg = multimodal
    provider = DataProvider(dataset, cfg.data)
    ids = list(provider.data.ids)
    lc, lc_mask = provider.series["lightcurve"], provider.series["lightcurve_mask"]
    sp, sp_mask = provider.series["spectrum"], provider.series["spectrum_mask"]
    assert lc.shape[:2] == (43, 64) and sp.shape == (43, 2, 256)
    i = ids.index("EROS_lm0010n22323")  # a real Cepheid: more points than 64, thinned
    assert lc_mask[i].sum() == 64 and lc[i, 0, 0] == 0.0 and np.all(np.diff(lc[i, :, 0]) >= 0)
    j = ids.index("BRJ2349-3712")  # a QSO with a spectrum and no light curve
    assert lc_mask[j].sum() == 0 and sp_mask[j].sum() > 0
    spec = read_spectrum(MM / "spectra" / "BRJ2349-3712.fits")
    grid = np.geomspace(3600, 10000, 256)
    covered = (grid >= spec["wave"].min()) & (grid <= spec["wave"].max())
    assert sp_mask[j].sum() == covered.sum()
    assert np.all(sp[j][:, sp_mask[j] == 0] == 0)
    k = ids.index("CSP_SN2004ef")
    bands = provider.normalizer.series["lightcurve_bands"]
    n_points = len(read_lightcurve(MM / "lightcurves" / "CSP_SN2004ef.csv"))
    assert lc_mask[k].sum() == min(64, n_points) and lc.shape[2] == 3 + len(bands)
    assert np.all(lc[k, :, 3:].sum(axis=1)[lc_mask[k] > 0] == 1)  # one band per point


@pytest.mark.parametrize("fusion", ["attention", "concat"])
def test_fusion_classifier_learns_from_whichever_modality_objects_have(multimodal, fusion):
    dataset, cfg = multimodal
    over = {**BASE, "model": {"name": "fusion_classifier", "fusion": fusion, "dim": 32},
            "train.epochs": 8, "train.lr": 3e-3, "train.early_stopping_patience": 0,
            "data.batch_size": 8}
    run = hm.train(None, over, dataset=dataset)
    data = mlflow.get_run(run.run_id).data
    assert data.params["model_resolved.classes"] == "['quasar', 'supernova', 'variable_star']"
    assert data.metrics["n_unlabelled"] == 3  # the DESI targets have no class
    losses = [m.value for m in sorted(MlflowClient().get_metric_history(run.run_id,
                                                                        "train_loss"),
                                      key=lambda m: m.step)]
    assert losses[-1] < losses[0]
    emb = hm.infer(None, over, train_run=run.run_id)
    table = pq.read_table(ArtifactCache.of(cfg).fetch(emb.run_id, "embeddings.parquet")).to_pandas()
    assert len(table) == 43  # spectrum-only, light-curve-only and unlabelled objects alike
    probs = np.stack(table["probabilities"].to_numpy())
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_fusion_with_one_modality_hidden_still_predicts(multimodal):
    import torch

    dataset, cfg = multimodal
    provider = DataProvider(dataset, cfg.data)
    from hyrax_mlops.models import build_model

    over = hm.load_config(cfg, {"model": {"name": "fusion_classifier", "dim": 16}})
    model = build_model(over.model, provider.input_shape, provider.data_info()).eval()
    batch = next(iter(provider.dataloader(None, batch_size=43)))
    batch["spectrum_mask"] = torch.zeros_like(batch["spectrum_mask"])  # every spectrum gone
    batch["lightcurve_mask"] = torch.zeros_like(batch["lightcurve_mask"])  # and light curves
    with torch.no_grad():
        probs = model.predict(batch)
    assert probs.shape == (43, 3) and torch.isfinite(probs).all()


def test_fusion_of_stamps_and_catalog_features_on_xdf_galaxies(demo_store, tmp_path):
    result, cfg = demo_store
    catalog = DataProvider(result["dataset"].run_id, cfg.data).catalog
    labels = pd.DataFrame({"object_id": catalog["object_id"], "morphology": np.where(
        catalog["r_half"] > catalog["r_half"].median(), "extended", "compact")})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    over = {"train.epochs": 3, "train.early_stopping_patience": 0, "data.batch_size": 32,
            "data.label_column": "morphology", "data.labels_file": str(tmp_path / "labels.csv"),
            "data.features": ["log10:flux", "npix"],
            "model": {"name": "fusion_classifier", "dim": 16, "width": 4}}
    run = hm.train(cfg, over, dataset=result["dataset"].run_id)
    data = mlflow.get_run(run.run_id).data
    assert data.params["model_resolved.features"] == "['log10:flux', 'npix']"
    assert "val_balanced_accuracy" in data.metrics and "test_roc_auc" in data.metrics
    emb = hm.infer(cfg, train_run=run.run_id)
    table = pq.read_table(ArtifactCache.of(cfg).fetch(emb.run_id, "embeddings.parquet")).to_pandas()
    assert len(table) == 300 and set(table["predicted_class"]) <= {"compact", "extended"}
