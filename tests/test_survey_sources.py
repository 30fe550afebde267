"""HSC and Rubin downloads against local servers that speak each service's protocol and serve
real FITS (HST F105W of Abell 2744) with faults injected: every object ends up in the dataset
or in its failures with the reason, credentials never reach the store, a `kill -9` resumes
into the same run without fetching anything twice, and streaming trains from the service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from survey_servers import HSCServer, RubinServer, served_key

import hyrax_mlops as hm
from hyrax_mlops.errors import ConfigError

SKY = Path(__file__).parent / "data" / "sky"
CATALOG = SKY / "catalog.csv"
OFF = {"OFF-0001", "OFF-0002"}  # positions outside every image: no data at the service
PASSWORD = "pw-Zq8#hsc-s3cret"
TOKEN = "tok-rubin-7Hc2-s3cret"
FAST = {"download.backoff_s": 0.01, "download.retries": 4, "download.timeout_s": 10,
        "download.stamp_size": 16, "download.pixel_scale": 0.06,
        "tracking.experiment": "surveys"}


@pytest.fixture
def hsc_env(monkeypatch):
    monkeypatch.setenv("HSC_SSP_CAS_USER", "hsc-user")
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)


@pytest.fixture
def rubin_env(monkeypatch):
    monkeypatch.setenv("RSP_TOKEN", TOKEN)


def hsc_config(server: HSCServer, **extra):
    return hm.load_config(None, {**FAST, "download.source": "hsc",
                                 "download.catalog": str(CATALOG),
                                 "download.hsc.url": server.api_url, **extra})


def rubin_config(server: RubinServer, **extra):
    return hm.load_config(None, {**FAST, "download.source": "rubin",
                                 "download.catalog": str(CATALOG),
                                 "download.rubin.url": server.url, **extra})


def dataset_of(run_id: str):
    import mlflow

    from hyrax_mlops.data.dataset import Dataset

    return Dataset(Path(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                            artifact_path="dataset")))


def found_in_sky(stamp: np.ndarray) -> bool:
    """True when `stamp` is an exact sub-array of one of the real images."""
    from astropy.io import fits

    s = stamp.shape[0]
    for path in SKY.glob("*.fits"):
        img = fits.getdata(path).astype(np.float32)
        ys, xs = np.nonzero(img[: img.shape[0] - s + 1, : img.shape[1] - s + 1] == stamp[0, 0])
        if any(np.array_equal(img[y:y + s, x:x + s], stamp) for y, x in zip(ys, xs,
                                                                             strict=True)):
            return True
    return False


def test_hsc_coordinate_list_names_its_columns_and_gives_semi_sizes():
    from hyrax_mlops.sources.hsc import HSC
    from hyrax_mlops.sources.survey import Target

    cfg = hm.load_config(None, {"download.source": "hsc", "download.bands": ["g", "HSC-I"],
                                "download.layers": ["image", "variance"],
                                "download.stamp_size": 64}).download
    hsc = HSC(cfg)
    assert hsc.bands == ["HSC-G", "HSC-I"]
    lines = hsc.coordinate_list([(Target("a", 150.0, 2.5), "HSC-G")]).splitlines()
    assert lines[0] == "#? rerun type filter tract ra dec sw sh image mask variance"
    rerun, typ, band, tract, ra, dec, sw, sh, image, mask, var = lines[1].split()
    assert (rerun, typ, band, tract) == ("pdr3_wide", "coadd", "HSC-G", "any")
    assert float(ra.removesuffix("deg")) == 150.0 and float(dec.removesuffix("deg")) == 2.5
    # a 64 px stamp at 0.168"/px plus a 2 px margin a side: semi-width 34 px
    assert float(sw.removesuffix("deg")) * 3600 == pytest.approx(34 * 0.168)
    assert sw == sh and (image, mask, var) == ("true", "false", "true")


def test_hsc_download_survives_faults_and_lists_every_failure(store, hsc_env):
    import mlflow

    faults = ["500", "reset", "truncated", "corrupt", "429", "slow"]
    with HSCServer(password=PASSWORD, faults=faults, slow_s=0.2) as server:
        cfg = hsc_config(server, **{"download.bands": ["g", "r"],
                                    "download.layers": ["image", "variance"],
                                    "download.hsc.rects_per_request": 8,
                                    "download.concurrency": 3})
        run = hm.download(cfg)
        served = dict(server.served)
    catalog = pd.read_csv(CATALOG)
    data = dataset_of(run.run_id)
    assert data.shape == (4, 16, 16)
    assert data.bands == ["HSC-G", "HSC-G:variance", "HSC-R", "HSC-R:variance"]
    assert set(data.ids) == set(catalog.object_id) - OFF
    failures = {f["object_id"]: f for f in data.manifest["failures"]}
    assert set(failures) == OFF
    assert all(f["reason"] == "no_data" and "HSC-G" in f["detail"] for f in failures.values())
    # every object fetched exactly once per band, despite the faults
    on_sky = catalog[~catalog.object_id.isin(OFF)]
    for row in on_sky.itertuples():
        for band in ("HSC-G", "HSC-R"):
            assert served.get(served_key(band, row.ra, row.dec)) == 1, (row.object_id, band)
    # real pixels from the real image, not something made up
    assert found_in_sky(data.images([0])[0, 0])
    r = mlflow.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.metrics["download.cutouts.done"] == 2 * len(on_sky)
    assert r.data.metrics["download.cutouts.retries"] >= len(faults) - 1
    assert "download.cutouts.rate_per_s" in r.data.metrics
    assert r.data.metrics["n_failed"] == 2
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.run_id, "download")}
    assert {"download/journal.jsonl", "download/failures.csv"} <= names
    failed_csv = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="download/failures.csv"))
    assert set(failed_csv.object_id) == OFF and set(failed_csv.reason) == {"no_data"}


def test_hsc_refused_credentials_stop_the_run_with_a_clear_message(store, monkeypatch):
    import mlflow

    monkeypatch.setenv("HSC_SSP_CAS_USER", "hsc-user")
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", "wrong")
    with HSCServer(password=PASSWORD) as server:
        with pytest.raises(Exception, match="refused the credentials") as err:
            hm.download(hsc_config(server))
        assert "wrong" not in str(err.value)  # the password never appears in the message
    run = mlflow.search_runs(experiment_names=["surveys"], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert "refused the credentials" in run.data.tags["hyrax.error"]


def test_missing_credentials_or_catalog_are_config_errors_before_any_run(store, monkeypatch):
    import mlflow

    monkeypatch.delenv("HSC_SSP_CAS_USER", raising=False)
    monkeypatch.delenv("HSC_SSP_CAS_PASSWORD", raising=False)
    monkeypatch.setenv("NETRC", str(store / "no-netrc"))
    cfg = {**FAST, "download.source": "hsc", "download.catalog": str(CATALOG),
           "download.hsc.url": "http://127.0.0.1:9/das_cutout/pdr3"}
    with pytest.raises(ConfigError, match="HSC_SSP_CAS_PASSWORD"):
        hm.download(None, cfg)
    with pytest.raises(ConfigError, match="download.catalog"):
        hm.download(None, {**cfg, "download.catalog": "nope.csv"})
    with pytest.raises(ConfigError, match="not an HSC filter"):
        hm.download(None, {**cfg, "download.bands": ["V"]})
    with pytest.raises(ConfigError, match="lsst.daf.butler"):
        hm.download(None, {**cfg, "download.source": "rubin",
                           "download.rubin.butler_repo": "/repo"})
    with pytest.raises(ConfigError, match="survey source"):
        hm.download(None, {"data.mode": "stream"})
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_credentials_file_and_netrc_are_read_and_never_logged(store, monkeypatch, capfd):
    from hyrax_mlops.downloader.credentials import basic_auth, bearer_token

    monkeypatch.delenv("HSC_SSP_CAS_USER", raising=False)
    monkeypatch.delenv("HSC_SSP_CAS_PASSWORD", raising=False)
    monkeypatch.delenv("RSP_TOKEN", raising=False)
    netrc = store / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login hsc-user password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    creds = basic_auth("http://127.0.0.1:1/x", user_env="U", password_env="P")
    assert (creds.user, creds.password, creds.origin) == ("hsc-user", PASSWORD,
                                                          "netrc 127.0.0.1")
    assert PASSWORD not in repr(creds)
    secrets = store / "creds.toml"
    secrets.write_text(f'[rubin]\ntoken = "{TOKEN}"\n')
    tok = bearer_token("https://x", token_env="NOPE", file=str(secrets))
    assert tok.token == TOKEN and tok.origin == "file [rubin]" and TOKEN not in repr(tok)

    with HSCServer(password=PASSWORD) as hsc, RubinServer(token=TOKEN) as rubin:
        run_h = hm.download(hsc_config(hsc, **{"download.bands": ["i"], "download.limit": 6}))
        run_r = hm.download(rubin_config(rubin, **{"download.bands": ["i"],
                                                   "download.limit": 6,
                                                   "download.credentials_file": str(secrets)}))
    import mlflow

    assert mlflow.get_run(run_h.run_id).data.tags["hyrax.download.credentials"] == \
        "netrc 127.0.0.1"
    assert mlflow.get_run(run_r.run_id).data.tags["hyrax.download.credentials"] == \
        "file [rubin]"
    out = capfd.readouterr()
    leaks = []
    for path in store.rglob("*"):
        if path.is_file() and path not in (netrc, secrets):
            blob = path.read_bytes()
            leaks += [f"{path}: {s}" for s in (PASSWORD, TOKEN) if s.encode() in blob]
    leaks += [s for s in (PASSWORD, TOKEN) if s in out.out + out.err]
    assert not leaks


def test_rubin_obscore_datalink_soda_with_faults(store, rubin_env):
    import mlflow

    faults = ["500", "429", "reset", "truncated", "corrupt", "slow"]
    with RubinServer(token=TOKEN, faults=faults, slow_s=0.2) as server:
        cfg = rubin_config(server, **{"download.bands": ["g", "i"],
                                      "download.layers": ["image", "mask", "variance"]})
        run = hm.download(cfg)
        served = dict(server.served)
    catalog = pd.read_csv(CATALOG)
    data = dataset_of(run.run_id)
    assert data.shape == (6, 16, 16)
    assert data.bands == ["g", "g:mask", "g:variance", "i", "i:mask", "i:variance"]
    assert set(data.ids) == set(catalog.object_id) - OFF
    failures = {f["object_id"]: f["reason"] for f in data.manifest["failures"]}
    assert failures == {oid: "no_data" for oid in OFF}
    on_sky = catalog[~catalog.object_id.isin(OFF)]
    for row in on_sky.itertuples():
        for band in ("g", "i"):
            assert served.get(served_key(band, row.ra, row.dec)) == 1
    assert found_in_sky(data.images([3])[0, 0])
    m = mlflow.get_run(run.run_id).data.metrics
    assert m["download.locate.done"] == len(catalog)
    assert m["download.links.done"] >= 2  # one DataLink call per image and band, not per object
    assert m["download.cutouts.done"] == 2 * len(on_sky)


RESUME_CFG = """
[tracking]
experiment = "surveys"
[download]
source = "hsc"
catalog = "{catalog}"
bands = ["g", "r", "i"]
stamp_size = 16
pixel_scale = 0.06
concurrency = 1
backoff_s = 0.01
[download.hsc]
url = "{url}"
rects_per_request = 2
"""


def test_kill_9_then_resume_continues_the_same_run_without_refetching(store, hsc_env):
    import mlflow

    from hyrax_mlops.downloader.journal import Journal

    catalog = pd.read_csv(CATALOG)
    with HSCServer(password=PASSWORD, latency_s=0.15) as server:
        cfg_path = store / "hsc.toml"
        cfg_path.write_text(RESUME_CFG.format(catalog=CATALOG, url=server.api_url))
        cmd = [sys.executable, "-m", "hyrax_mlops.cli", "download", "-c", str(cfg_path)]
        proc = subprocess.Popen(cmd, cwd=store, env=dict(os.environ),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, journal_path = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            found = list((store / ".hyrax/cache/downloads").glob("*/journal.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 12:
                journal_path = found[0]
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert journal_path is not None, "the download never got going"
        run_id = journal_path.parent.name
        done_before = set(Journal(journal_path).done)
        total = 3 * (len(catalog) - len(OFF))
        assert 12 <= len(done_before) < total, "finished before it could be killed"
        assert mlflow.get_run(run_id).info.status == "RUNNING"  # a kill -9 leaves it so

        resumed = subprocess.run([*cmd[:4], "--resume", run_id], cwd=store,
                                 env=dict(os.environ), capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        served = dict(server.served)
    assert run_id in resumed.stdout
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(mlflow.search_runs(experiment_names=["surveys"], output_format="list")) == 1
    by_key = {f"{r.object_id}|{b}": served_key(b, r.ra, r.dec) for r in catalog.itertuples()
              for b in ("HSC-G", "HSC-R", "HSC-I")}
    assert all(served[by_key[k]] == 1 for k in done_before)  # nothing fetched twice
    data = dataset_of(run_id)
    assert set(data.ids) == set(catalog.object_id) - OFF and data.shape == (3, 16, 16)


def test_resume_refuses_a_finished_or_foreign_run(demo_store):
    from hyrax_mlops.errors import LineageError

    result, _ = demo_store
    with pytest.raises(LineageError, match="FINISHED"):
        hm.download(resume=result["dataset"].run_id)
    with pytest.raises(LineageError, match="not a download run"):
        hm.download(resume=result["train"].run_id)


def test_lru_cache_evicts_the_least_recently_used(tmp_path):
    from hyrax_mlops.sources.stream import LRUCutoutStore

    stamp = np.ones((1, 16, 16), np.float32)
    size = len(np.lib.format.header_data_from_array_1_0(stamp)) + stamp.nbytes  # ~1.1 kB
    store = LRUCutoutStore(tmp_path, max_bytes=int(2.5 * (size + 128)))
    store.put("a", "g", stamp)
    store.put("b", "g", stamp)
    store.get("a", "g")  # a is now the most recent
    store.put("c", "g", stamp)
    assert store.has("a", "g") and store.has("c", "g") and not store.has("b", "g")
    assert store.evicted == 1
    again = LRUCutoutStore(tmp_path, max_bytes=store.max_bytes)  # a new process sees the same
    assert again.bytes == store.bytes


def test_streaming_trains_from_the_service_and_reads_the_cache_after(store, rubin_env):
    import mlflow

    with RubinServer(token=TOKEN, faults=["500", "reset"]) as server:
        cfg = rubin_config(server, **{"data.mode": "stream", "download.bands": ["g", "r"],
                                      "train.epochs": 2, "data.batch_size": 8,
                                      "model.widths": [8, 16], "model.latent_dim": 4})
        run = hm.train(cfg)
        cutout_calls = [p for p, status in server.log if "cutout" in p]
        served = dict(server.served)
    train = mlflow.get_run(run.run_id)
    dataset_id = train.data.tags["hyrax.input.dataset"]
    ds = mlflow.get_run(dataset_id)
    assert ds.data.tags["hyrax.dataset.mode"] == "stream"
    manifest = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=dataset_id, artifact_path="dataset/manifest.json")).read_text())
    assert manifest["shards"] == [] and manifest["shape"] == [2, 16, 16]
    assert train.info.status == "FINISHED" and "val_loss" in train.data.metrics
    on_sky = pd.read_csv(CATALOG).pipe(lambda c: c[~c.object_id.isin(OFF)])
    # each cutout crossed the network once: epoch two and evaluation read the disk cache
    assert len(served) == 2 * len(on_sky) and set(served.values()) == {1}
    assert len(cutout_calls) <= 2 * len(on_sky) + 2
    cached = list((store / ".hyrax/stream").rglob("*.npy"))
    assert len(cached) == 2 * len(on_sky)


def test_streamed_cutouts_that_fail_are_left_out_of_batches_and_counted(store, rubin_env,
                                                                        capfd):
    """The service has no data at the OFF positions: those objects never reach a batch (they
    were once trained on as all-zero stamps) and the train run counts them."""
    import mlflow

    from hyrax_mlops.data.provider import DataProvider

    with RubinServer(token=TOKEN) as server:
        cfg = rubin_config(server, **{"data.mode": "stream", "download.bands": ["g", "r"],
                                      "train.epochs": 1, "data.batch_size": 4,
                                      "model.widths": [8, 16], "model.latent_dim": 4})
        run = hm.train(cfg)
        train = mlflow.get_run(run.run_id)
        assert train.info.status == "FINISHED"
        assert train.data.metrics["stream_failed_objects"] == len(OFF)
        said = capfd.readouterr().err
        assert f"stream: {len(OFF)} object(s) could not be fetched and are left out" in said
        assert all(o in said for o in OFF)

        provider = DataProvider(train.data.tags["hyrax.input.dataset"], cfg.data)
        ids = provider.catalog["object_id"].astype(str).to_numpy()
        in_splits = {s: set(ids[provider.rows(s)]) for s in ("train", "val", "test")}
        assert set().union(*in_splits.values()) >= OFF  # they would have been in batches
        seen: set[str] = set()
        for split in ("train", "val", "test"):
            for batch in provider.dataloader(split, batch_size=4):
                got = set(ids[batch["row"].numpy()])
                assert not got & OFF, f"{split} batch holds failed objects {got & OFF}"
                assert len(batch["image"]) == len(batch["row"]) > 0
                assert bool((batch["image"].flatten(1).abs().amax(1) > 0).all())  # no zeros
                seen |= got
        on_sky = set(pd.read_csv(CATALOG)["object_id"].astype(str)) - OFF
        assert seen == on_sky & set().union(*in_splits.values())
        assert provider.report_stream_failures() == len(OFF)

        from hyrax_mlops.stages.infer import read_embeddings

        embedded = hm.infer(cfg, train_run=run.run_id)  # no embedding made from zeros either
        got_ids, vectors = read_embeddings(embedded.run_id)
        assert set(got_ids) == on_sky and len(vectors) == len(on_sky)
        assert mlflow.get_run(embedded.run_id).data.metrics["stream_failed_objects"] == len(OFF)


def test_a_catalog_edited_in_place_makes_a_new_download_run(store, rubin_env):
    """The download run is keyed by the catalog's content (sha256), not only by its path."""
    import hashlib
    import shutil

    import mlflow

    from hyrax_mlops.stages.download import _spec_and_body

    catalog = store / "targets.csv"
    shutil.copy(CATALOG, catalog)
    with RubinServer(token=TOKEN) as server:
        over = {"data.mode": "stream", "download.catalog": str(catalog)}
        first = hm.download(rubin_config(server, **over))
        again = hm.download(rubin_config(server, **over))
        assert not first.reused and again.reused and again.run_id == first.run_id
        tag = mlflow.get_run(first.run_id).data.tags["hyrax.data_fingerprint"]
        assert hashlib.sha256(catalog.read_bytes()).hexdigest() in tag
        dataset_spec = _spec_and_body(rubin_config(server, **{"download.catalog":
                                                               str(catalog)}))[0]
        lines = catalog.read_text().splitlines()
        catalog.write_text("\n".join(lines[:-3]) + "\n")  # same path, three objects fewer
        edited = hm.download(rubin_config(server, **over))
        assert not edited.reused and edited.run_id != first.run_id
        assert len(dataset_of(edited.run_id).catalog) == len(dataset_of(first.run_id).catalog) - 3
        assert _spec_and_body(rubin_config(server, **{"download.catalog": str(catalog)})
                              )[0].fingerprint != dataset_spec.fingerprint
    assert server.served == {}  # a streamed download fetches no pixels
