"""Hostile configs: every bad setting stops with a clear message before the first run exists.

Each case goes through the CLI's own `main` (what a user types), in a fresh tracking store:
the command exits 2 with one `error:` message that names the key (no traceback), no secret
is echoed, and the store holds no run afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hyrax_mlops.cli import main

SECRET = "s3cr3t-Pa55"

# (case id, arguments after `pipeline`, text the message must contain)
CASES = [
    ("latent_dim_text", ["--set", "model.latent_dim=x"], "model.latent_dim"),
    ("latent_dim_fraction", ["--set", "model.latent_dim=16.5"], "model.latent_dim"),
    ("latent_dim_bool", ["--set", "model.latent_dim=true"], "model.latent_dim"),
    ("widths_words", ["--set", "model.widths=[a,b]"], "model.widths"),
    ("widths_number", ["--set", "model.widths=7"], "model.widths"),
    ("model_unknown_key", ["--set", "model.latnet_dim=8"], "model.latent_dim"),
    ("model_unknown_name", ["--set", "model.name=conv_autoencodr"], "model.name"),
    ("model_not_a_module", ["--set", "model.name=os.path:join"], "torch.nn.Module"),
    ("model_not_importable", ["--set", "model.name=no_such_pkg.mod:Net"], "model.name"),
    ("experiment_empty", ["--set", "tracking.experiment="], "tracking.experiment"),
    ("experiment_blank", ["--set", 'tracking.experiment="   "'], "tracking.experiment"),
    ("reduce_no_methods", ["--set", "reduce.methods=[]"], "reduce.methods"),
    ("reduce_repeated", ["--set", "reduce.methods=[pca,pca]"], "reduce.methods"),
    ("reduce_unknown", ["--set", "reduce.methods=[umapp]"], "reduce.methods"),
    ("reduce_dims_4", ["--set", "reduce.dims=[4]"], "reduce.dims"),
    ("epochs_bool", ["--set", "train.epochs=true"], "train.epochs"),
    ("epochs_zero", ["--set", "train.epochs=0"], "train.epochs"),
    ("epochs_negative", ["--set", "train.epochs=-3"], "train.epochs"),
    ("epochs_fraction", ["--set", "train.epochs=2.5"], "train.epochs"),
    ("lr_bool", ["--set", "train.lr=true"], "train.lr"),
    ("lr_zero", ["--set", "train.lr=0"], "train.lr"),
    ("lr_text", ["--set", "train.lr=fast"], "train.lr"),
    ("device_tpu", ["--set", "train.device=tpu"], "train.device"),
    ("split_two", ["--set", "data.split=[0.5,0.5]"], "data.split"),
    ("batch_zero", ["--set", "data.batch_size=0"], "data.batch_size"),
    ("normalize_unknown", ["--set", "data.normalize=sqrtt"], "data.normalize"),
    ("label_column_typo", ["--set", "data.label_column=fluxx"], "data.label_column"),
    ("labels_needed", ["--set", "model.name=stamp_classifier"], "data.label_column"),
    ("labels_file_missing", ["--set", "data.labels_file=/no/such/labels.csv",
                             "--set", "data.label_column=kind"], "data.labels_file"),
    ("labels_file_no_column", ["--set", "data.labels_file={labels}",
                               "--set", "data.label_column=klass"], "data.label_column"),
    ("labels_file_no_ids", ["--set", "data.labels_file={labels_no_id}",
                            "--set", "data.label_column=kind"], "object_id"),
    ("labels_file_binary", ["--set", "data.labels_file={binary_csv}",
                            "--set", "data.label_column=kind"], "data.labels_file"),
    ("features_unknown", ["--set", "data.features=[log10:fluxx]"], "data.features"),
    ("features_transform", ["--set", "data.features=[sqrt:flux]"], "data.features"),
    ("index_backend_typo", ["--set", "index.backend=chromaa"], "index.backend"),
    ("index_metric_typo", ["--set", "index.metric=cosin"], "index.metric"),
    ("index_metadata_unknown", ["--set", "index.metadata_columns=[nosuch]"],
     "index.metadata_columns"),
    ("source_unknown", ["--set", "download.source=sdss"], "download.source"),
    ("survey_without_catalog", ["--set", "download.source=hsc"], "download.catalog"),
    ("stream_from_demo", ["--set", "data.mode=stream"], "data.mode"),
    ("hsc_url_userinfo", ["--set", f"download.hsc.url=https://me:{SECRET}@hsc.example.org/x"],
     "HSC_SSP_CAS_PASSWORD"),
    ("rubin_url_token", ["--set", f"download.rubin.url=https://{SECRET}@data.example.org"],
     "RSP_TOKEN"),
    ("index_url_userinfo", ["--set", f"index.url=http://chroma:{SECRET}@127.0.0.1:8000"],
     "CHROMA_TOKEN"),
    ("ray_address_userinfo", ["--set", f"ray.address=ray://admin:{SECRET}@127.0.0.1:10001"],
     "ray.address"),
    ("butler_repo_userinfo", ["--set", f"download.rubin.butler_repo=s3://key:{SECRET}@bucket/r"],
     "download.rubin.butler_repo"),
    ("ingest_no_catalog", ["--set", "pipeline.dataset=ingest"], "ingest.catalog"),
    ("ingest_dir_missing", ["--set", "pipeline.dataset=ingest",
                            "--set", "ingest.cutouts_dir=/no/such/dir",
                            "--set", "ingest.catalog={labels}"], "ingest.cutouts_dir"),
    ("pipeline_dataset_typo", ["--set", "pipeline.dataset=ingets"], "pipeline.dataset"),
    ("unknown_table", ["--set", "trian.epochs=5"], "train"),
    ("unknown_key", ["--set", "train.epoch=5"], "train.epochs"),
    ("not_key_value", ["--set", "train.epochs"], "KEY=VALUE"),
    # the user's own catalog-only data: no label quality could fall back on (the demo has one)
    ("quality_without_label", ["--set", "pipeline.analyse=true",
                               "--set", "analyse.analyses=[quality]",
                               "--set", "pipeline.dataset=ingest", "--set",
                               f"ingest.catalog={Path(__file__).parent}/data/multimodal/objects.csv"],
     "analyse.label_column"),
    ("crossmatch_without_reference", ["--set", "pipeline.analyse=true",
                                      "--set", "analyse.analyses=[crossmatch]"],
     "analyse.reference"),
    ("analyse_unknown", ["--set", "pipeline.analyse=true",
                         "--set", "analyse.analyses=[outlierz]"], "analyse.analyses"),
    ("config_missing", ["-c", "/no/such/hyrax.toml"], "does not exist"),
    ("config_not_toml", ["-c", "{bad_toml}"], "not valid TOML"),
    ("config_binary", ["-c", "{binary_toml}"], "not valid TOML"),
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "labels.csv").write_text("object_id,kind\nXDF00001,spiral\nXDF00002,elliptical\n")
    (inputs / "labels_no_id.csv").write_text("name,kind\nXDF00001,spiral\n")
    (inputs / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (inputs / "bad.toml").write_text("[train]\nepochs = = 5\n")
    (inputs / "binary.toml").write_bytes(b"\x00\xff\xfe" * 50)
    return {"labels": str(inputs / "labels.csv"), "labels_no_id": str(inputs / "labels_no_id.csv"),
            "binary_csv": str(inputs / "binary.csv"), "bad_toml": str(inputs / "bad.toml"),
            "binary_toml": str(inputs / "binary.toml")}


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_stops_before_any_run(args, expected, files, store, capsys):
    import mlflow

    argv = ["pipeline", *(a.format(**files) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    assert expected in err, err
    assert SECRET not in err
    if (store / "mlflow.db").exists():  # checks ran first: often not even a store was made
        assert mlflow.search_runs(search_all_experiments=True).empty


def test_case_count():
    """The hostile-input suite's size, as the closing note reports it."""
    assert len(CASES) >= 50
