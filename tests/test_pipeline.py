"""The spine end to end on real XDF galaxies: runs, tags, artifacts, reuse, lineage, search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

import hyrax_mlops as hm
from hyrax_mlops.cli import main
from hyrax_mlops.errors import LineageError
from hyrax_mlops.stages.registry import STAGES as REGISTERED
from hyrax_mlops.tracking import code_version

from conftest import N_DEMO

STAGES = ("dataset", "train", "infer", "index", "reduce")


def artifacts(run_id: str, path: str = "") -> set[str]:
    out, todo = set(), [path]
    while todo:
        for f in MlflowClient().list_artifacts(run_id, todo.pop() or None):
            (todo.append(f.path) if f.is_dir else out.add(f.path))
    return out


def test_every_stage_is_a_tagged_nested_run_with_lineage(demo_store):
    result, cfg = demo_store
    parent = mlflow.get_run(result.run_id)
    assert parent.data.tags["hyrax.stage"] == "pipeline"
    expected_inputs = {
        "dataset": {}, "train": {"dataset": "dataset"},
        "infer": {"dataset": "dataset", "model": "train"},
        "index": {"embeddings": "infer", "dataset": "dataset"},
        "reduce": {"embeddings": "infer", "dataset": "dataset"},
    }
    for name in STAGES:
        step = result[name]
        assert not step.reused
        run = mlflow.get_run(step.run_id)
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == result.run_id
        assert tags["hyrax.stage"] == ("download" if name == "dataset" else name)
        assert tags["hyrax.code_version"] == code_version(tags["hyrax.stage"])
        assert len(tags["hyrax.config_hash"]) == 16
        assert parent.data.tags[f"hyrax.stage_run.{name}"] == step.run_id
        inputs = {k.split(".", 2)[2]: v for k, v in tags.items() if k.startswith("hyrax.input.")}
        assert inputs == {k: result[v].run_id for k, v in expected_inputs[name].items()}
        # the sections the stage reads are logged as a file and as params
        assert "config/hyrax.toml" in artifacts(step.run_id)
        logged = hm.load_config(mlflow.artifacts.download_artifacts(
            run_id=step.run_id, artifact_path="config/hyrax.toml"))
        sections = REGISTERED.get(tags["hyrax.stage"]).sections
        assert logged.flat(sections) == cfg.flat(sections)
        assert cfg.flat(sections).items() <= run.data.params.items()
    assert mlflow.get_run(result["train"].run_id).data.params["train.epochs"] == "3"
    assert mlflow.get_run(result["reduce"].run_id).data.params["reduce.umap_n_neighbors"] == "15"


def test_dataset_artifacts_hold_every_object(demo_store):
    result, cfg = demo_store
    run_id = result["dataset"].run_id
    files = artifacts(run_id)
    assert {"dataset/catalog.parquet", "dataset/manifest.json",
            "dataset/shards/image-00000.npy"} <= files
    manifest = json.loads(mlflow.artifacts.load_text(
        f"runs:/{run_id}/dataset/manifest.json"))
    assert manifest["counts"] == {"requested": N_DEMO, "ingested": N_DEMO, "failed": 0,
                                  "failed_by_reason": {}}
    assert manifest["shape"] == [3, 64, 64] and manifest["bands"] == ["R", "G", "B"]
    catalog = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="dataset/catalog.parquet"))
    assert len(catalog) == N_DEMO and catalog["object_id"].is_unique
    assert {"flux", "flux_r", "r_half", "ra", "dec"} <= set(catalog.columns)
    assert catalog["flux"].is_monotonic_decreasing  # brightest first, as the source promises


def test_train_run_logs_curves_figures_checkpoint_and_a_loadable_model(demo_store):
    result, cfg = demo_store
    run_id = result["train"].run_id
    client = MlflowClient()
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [0, 1, 2]
    for key in ("train_loss", "epoch_time_s", "samples_per_s"):
        assert len(client.get_metric_history(run_id, key)) == 3
    files = artifacts(run_id)
    assert {"checkpoints/best.pt", "plots/loss_curve.png", "plots/reconstructions.png"} <= files

    uri = mlflow.get_run(run_id).data.tags["hyrax.model_uri"]
    served = mlflow.pyfunc.load_model(uri)  # the pyfunc: raw cutouts in, embeddings out
    from hyrax_mlops.engine.bundle import load_bundle

    rebuilt = load_bundle(f"runs:/{run_id}/model")  # weights_only path, no unpickling
    x = np.random.default_rng(0).uniform(0, 255, (4, 3, 64, 64)).astype(np.float32)
    a = np.stack(served.predict(x)["embedding"])
    with torch.no_grad():
        b = rebuilt.model.eval().embed(
            {"image": torch.from_numpy(rebuilt.normalizer.apply(x.copy()))}).numpy()
    assert a.shape == (4, 16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert rebuilt.run_id == run_id and rebuilt.normalizer.method == "asinh"


def test_embeddings_and_reductions_cover_every_object(demo_store):
    result, cfg = demo_store
    emb_path = mlflow.artifacts.download_artifacts(
        run_id=result["infer"].run_id, artifact_path="embeddings.parquet")
    table = pq.read_table(emb_path)
    assert table.schema.field("embedding").type.list_size == 16
    assert table.num_rows == N_DEMO and len(set(table["object_id"].to_pylist())) == N_DEMO

    red = result["reduce"].run_id
    files = artifacts(red)
    for key in ("umap_2d", "umap_3d", "pca_2d", "pca_3d"):
        assert f"reductions/{key}.parquet" in files and f"plots/{key}.png" in files
    assert "reductions.html" in files
    umap3 = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=red, artifact_path="reductions/umap_3d.parquet"))
    assert list(umap3.columns) == ["object_id", "x", "y", "z"] and len(umap3) == N_DEMO
    assert np.isfinite(umap3[["x", "y", "z"]].to_numpy()).all()

    # PCA is exactly what scikit-learn gives on the same embeddings
    from sklearn.decomposition import PCA

    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    pca2 = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=red, artifact_path="reductions/pca_2d.parquet"))
    ref = PCA(n_components=2, random_state=cfg.reduce.seed).fit_transform(vectors)
    np.testing.assert_allclose(pca2[["x", "y"]].to_numpy(), ref, rtol=1e-3, atol=1e-4)
    html = Path(mlflow.artifacts.download_artifacts(run_id=red, artifact_path="reductions.html"))
    text = html.read_text()
    assert text.count("plotly-graph-div") >= 4 and "<script src=" not in text  # offline


def test_search_returns_the_object_first_and_agrees_with_exact_search(demo_store):
    result, cfg = demo_store
    from hyrax_mlops.search import Searcher
    from hyrax_mlops.stages.infer import read_embeddings

    ids, vectors = read_embeddings(result["infer"].run_id)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    searcher = Searcher(result.run_id, cfg)  # a pipeline run resolves to its index
    hits = 0
    queries = ids[::30]
    for oid, table in zip(queries, searcher.by_id(queries, k=10), strict=True):
        assert table["object_id"].iloc[0] == oid
        assert table["distance"].iloc[0] == pytest.approx(0, abs=1e-5)
        assert table["distance"].is_monotonic_increasing
        assert table["flux"].notna().all()  # catalog rows joined
        exact = ids[np.argsort(-(unit @ unit[ids == oid][0]), kind="stable")[:10]]
        hits += len(set(exact) & set(table["object_id"]))
    assert hits / (10 * len(queries)) >= 0.9

    by_vec = hm.search_by_vector(result["index"].run_id, vectors[5], k=3)
    assert by_vec["object_id"].iloc[0] == ids[5]
    with pytest.raises(hm.errors.HyraxError, match="NOT_AN_ID"):
        hm.search_by_id(result["index"].run_id, "NOT_AN_ID")


def test_cli_search_and_lineage(demo_store, capsys, tmp_path):
    result, cfg = demo_store
    assert main(["search", "--run", result["index"].run_id, "--id", "XDF00007", "-k", "4",
                 "--set", "tracking.experiment=test"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[:2] == ["1", "XDF00007"] and len(lines) == 5
    from hyrax_mlops.stages.infer import read_embeddings

    _, vectors = read_embeddings(result["infer"].run_id)
    np.save(tmp_path / "q.npy", vectors[6])
    assert main(["search", "--run", result.run_id, "--vector", str(tmp_path / "q.npy")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["1", "XDF00007"]

    assert main(["lineage", result["reduce"].run_id]) == 0
    out = capsys.readouterr().out
    for name in ("dataset", "train", "infer"):
        assert result[name].run_id in out
    assert "embeddings: infer" in out and "model: train" in out and "dataset: download" in out


def test_second_pipeline_reuses_every_stage_and_one_change_reruns_only_reduce(demo_sandbox):
    result, cfg = demo_sandbox
    again = hm.pipeline(cfg)
    assert again.run_id != result.run_id
    for name in STAGES:
        assert again[name].reused and again[name].run_id == result[name].run_id
    assert mlflow.get_run(again.run_id).data.tags["hyrax.reused.reduce"] == "true"

    changed = hm.pipeline(cfg, {"reduce.umap_n_neighbors": 10})
    assert [n for n in STAGES if not changed[n].reused] == ["reduce"]
    assert changed["reduce"].run_id != result["reduce"].run_id
    assert mlflow.get_run(changed["reduce"].run_id).data.params["reduce.umap_n_neighbors"] == "10"

    forced = hm.reduce(cfg, embeddings=result["infer"].run_id, force=True)
    assert not forced.reused and forced.run_id != result["reduce"].run_id


def test_reindexing_never_duplicates_and_a_lost_index_is_rebuilt(demo_store):
    result, cfg = demo_store
    from hyrax_mlops.search import Searcher

    forced = hm.index(cfg, embeddings=result["infer"].run_id, force=True)
    assert not forced.reused
    assert Searcher(forced.run_id, cfg).index.count() == N_DEMO
    assert hm.index(cfg, embeddings=result["infer"].run_id).reused

    location = json.loads(mlflow.get_run(forced.run_id).data.tags["hyrax.index.location"])
    shutil.rmtree(location["path"])  # the Chroma folder is gone: reuse would be a lie
    rebuilt = hm.index(cfg, embeddings=result["infer"].run_id)
    assert not rebuilt.reused
    assert hm.search_by_id(rebuilt.run_id, "XDF00003", k=2)["object_id"].iloc[0] == "XDF00003"


def test_index_on_a_chroma_server(demo_store, tmp_path):
    from servers import chroma_server

    result, cfg = demo_store
    with chroma_server(tmp_path / "chroma-server") as url:
        run = hm.index(cfg, {"index.url": url}, embeddings=result["infer"].run_id)
        assert not run.reused
        assert json.loads(mlflow.get_run(run.run_id).data.tags["hyrax.index.location"]) == {
            "backend": "chroma", "url": url}
        hits = hm.search_by_id(run.run_id, "XDF00010", k=5)
        assert hits["object_id"].iloc[0] == "XDF00010" and len(hits) == 5
        assert mlflow.get_run(run.run_id).data.metrics["recall_at_10"] >= 0.9


def test_infer_from_a_registered_model(demo_store):
    result, cfg = demo_store
    registered = hm.load_config(cfg, {"train.register_as": "xdf-autoencoder",
                                      "train.epochs": 1})
    trained = hm.train(registered, dataset=result["dataset"].run_id)
    version = MlflowClient().get_model_version("xdf-autoencoder", "1")
    assert version.run_id == trained.run_id
    emb = hm.infer(cfg, {"infer.model": "models:/xdf-autoencoder/1"})
    tags = mlflow.get_run(emb.run_id).data.tags
    assert tags["hyrax.input.model"] == trained.run_id
    assert tags["hyrax.input.dataset"] == result["dataset"].run_id
    assert tags["hyrax.model_uri"] == "models:/xdf-autoencoder/1"


def test_demo_columns_are_known_before_its_dataset_exists(demo_store):
    """`pipeline` checks the columns a config names against these before any run: they must
    be exactly what the xdf source writes."""
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.sources.xdf import CATALOG_COLUMNS
    from hyrax_mlops.tracking import ArtifactCache

    result, cfg = demo_store
    data = Dataset(ArtifactCache.of(cfg).fetch(result["dataset"].run_id, ARTIFACT_DIR))
    assert list(data.catalog.columns) == list(CATALOG_COLUMNS)


def test_a_stage_s_code_version_follows_the_code_it_runs(tmp_path):
    """Per stage, from the modules its own module imports: a comment edited in the CLI or the
    app's search leaves every cached training run valid; an edit to the training loop does
    not; the index, which imports the stamp statistics, changes with them and train doesn't."""
    import shutil

    from hyrax_mlops.code_version import code_version as version_of
    from hyrax_mlops.code_version import import_closure

    root = tmp_path / "hyrax_mlops"
    shutil.copytree(Path(hm.__file__).parent, root,
                    ignore=shutil.ignore_patterns("__pycache__"))
    names = {str(p.relative_to(root)) for p in import_closure("hyrax_mlops.stages.train", root)}
    assert {"stages/train.py", "engine/loop.py", "models/__init__.py", "config.py",
            "defaults.toml", "tracking/stage_run.py", "tracking/artifacts.py"} <= names
    assert not names & {"cli.py", "api.py", "__init__.py", "search.py", "stages/index.py"}

    def versions() -> dict[str, str]:
        version_of.cache_clear()
        return {s: version_of(s, root) for s in ("download", "train", "index", "pipeline")}

    before = versions()
    assert len(set(before.values())) == 4
    for path, changes in (("cli.py", set()), ("search.py", set()),
                          ("analysis/stamp_statistics.py", {"index", "pipeline"}),
                          ("engine/loop.py", {"train", "index", "pipeline"}),
                          # a built-in source, registered when SOURCES is first read (train,
                          # and index through it, can stream cutouts from a source)
                          ("sources/xdf.py", {"download", "train", "index", "pipeline"})):
        (root / path).write_text((root / path).read_text() + "\n# a comment\n")
        after = versions()
        assert {s for s in before if after[s] != before[s]} == changes, path
        before = after


def test_infer_of_a_model_that_is_not_there_says_so_before_any_run(demo_store):
    result, cfg = demo_store
    before = len(mlflow.search_runs(search_all_experiments=True))
    for uri in (f"runs:/{result['train'].run_id}/nomodel", "models:/no-such-model/1"):
        with pytest.raises(LineageError, match=r"cannot find model '.*'.*Fix: point "
                                               r"infer.model at a model a train run logged"):
            hm.infer(cfg, {"infer.model": uri}, force=True)
    assert len(mlflow.search_runs(search_all_experiments=True)) == before
