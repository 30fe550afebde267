"""`analyse` on real data: artefacts injected into real XDF stamps are found, latent quality
against measured morphology, clusters against direct sklearn calls, and crossmatch of real
transients with their real host galaxies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits

import hyrax_mlops as hm
from hyrax_mlops.analysis.analyses import AnalysisContext
from hyrax_mlops.analysis.crossmatch import crossmatch, match_greedy, match_nearest
from hyrax_mlops.cli import entrypoint, main
from hyrax_mlops.config import load_config
from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
from hyrax_mlops.errors import ConfigError, LineageError
from hyrax_mlops.tracking import ArtifactCache

from conftest import DATA, in_store

XMATCH = DATA / "crossmatch"
REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = {"model.latent_dim": 16, "model.widths": [16, 32, 32]}


def demo_stamps(result, cfg) -> tuple[np.ndarray, pd.DataFrame]:
    data = Dataset(ArtifactCache.of(cfg).fetch(result["dataset"].run_id, ARTIFACT_DIR))
    return data.images(np.arange(len(data))), data.catalog


def write_user_dir(root, cubes: np.ndarray, catalog: pd.DataFrame) -> None:
    """What a user hands to `ingest`: one FITS file per object and a catalog."""
    (root / "cutouts").mkdir(parents=True)
    for oid, cube in zip(catalog["object_id"], cubes, strict=True):
        fits.PrimaryHDU(cube).writeto(root / "cutouts" / f"{oid}.fits")
    catalog.to_csv(root / "catalog.csv", index=False)


def inject(cubes: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Artefacts in `n` random stamps, in turn: a dead band (one channel zeroed), a satellite
    trail (a 2-pixel saturated line across the stamp), cosmic rays (4-7 saturated hits of one
    or two pixels in one band). The XDF pixels are 8-bit display values: 255 is saturation."""
    rows = rng.choice(len(cubes), n, replace=False)
    kinds = np.array(["dead_band", "trail", "cosmic_rays"] * n)[:n]
    yy, xx = np.mgrid[0:cubes.shape[2], 0:cubes.shape[3]]
    for row, kind in zip(rows, kinds, strict=True):
        cube = cubes[row]
        if kind == "dead_band":
            cube[rng.integers(len(cube))] = 0.0
        elif kind == "trail":
            angle, (x0, y0) = rng.uniform(0, np.pi), rng.uniform(20, 44, 2)
            cube[:, np.abs((xx - x0) * np.sin(angle) - (yy - y0) * np.cos(angle)) < 1.0] = 255
        else:
            for _ in range(rng.integers(4, 8)):
                band, y, x = rng.integers(len(cube)), *rng.integers(2, 62, 2)
                cube[band, y, x:x + 1 + (rng.random() < 0.5)] = 255.0
    return rows, kinds


def pca_knn_reference(cubes: np.ndarray, k: int = 10) -> np.ndarray:
    """No learning: PCA of the raw pixels, then the mean distance to the k nearest."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    z = PCA(n_components=16, random_state=0).fit_transform(cubes.reshape(len(cubes), -1))
    dist, _ = NearestNeighbors(n_neighbors=k).fit(z).kneighbors()
    return dist.mean(axis=1)


def artifact_table(run_id: str, path: str, cfg) -> pd.DataFrame:
    local = ArtifactCache.of(cfg).fetch(run_id, path)
    return pd.read_csv(local) if path.endswith(".csv") else pd.read_parquet(local)


# --------------------------------------------------------------------------- outliers


@pytest.fixture(scope="module")
def injected(demo, demo_dir, tmp_path_factory):
    """The demo's stamps as a user's own FITS folder, 5 % of them with an injected artefact
    (rng 7), through ingest -> train -> infer -> analyse (outliers) as a user would run it:
    (folder, cfg, analyse run, injected rows, their kinds, cubes, catalog)."""
    result, demo_cfg = demo
    with in_store(demo_dir):
        cubes, catalog = demo_stamps(result, demo_cfg)
    rows, kinds = inject(cubes, np.random.default_rng(7), round(0.05 * len(cubes)))
    folder = tmp_path_factory.mktemp("injected")
    write_user_dir(folder, cubes, catalog[["object_id", "flux", "r_half", "peak"]])
    with in_store(folder):
        cfg = load_config(None, {
            **SMALL_MODEL, "pipeline.dataset": "ingest", "ingest.cutouts_dir": "cutouts",
            "ingest.catalog": "catalog.csv", "train.epochs": 20, "train.lr": 0.005,
            "analyse.analyses": ["outliers"]})  # default methods: "auto" -> "residual" here
        run = hm.analyse(cfg)  # ingest -> train -> infer -> analyse, as a user would
    return folder, cfg, run, rows, kinds, cubes, catalog


def test_injected_artefacts_rank_among_the_top_outliers(injected):
    folder, cfg, run, rows, kinds, cubes, catalog = injected
    top = int(0.1 * len(cubes))
    injected = catalog["object_id"].to_numpy()[rows]

    with in_store(folder):
        assert mlflow.get_run(run.run_id).data.params["analyse.outlier_methods"] == \
            '["residual"]'
        analysed = mlflow.get_run(run.run_id)
        infer_run = analysed.data.tags["hyrax.input.embeddings"]
        assert mlflow.get_run(infer_run).data.tags["hyrax.stage"] == "infer"
        table = artifact_table(run.run_id, "analysis/outliers.parquet", cfg)
        latent_run = hm.analyse(cfg, {"analyse.outlier_methods": ["knn", "lof", "iforest"]},
                                embeddings=infer_run)
        latent = artifact_table(latent_run.run_id, "analysis/outliers.parquet", cfg)
        columns = artifact_table(run.run_id, "analysis/columns.parquet", cfg)
        gallery = {f.path for f in mlflow.MlflowClient().list_artifacts(run.run_id, "plots")}
        statistics = artifact_table(run.run_id, "analysis/stamp_statistics.parquet", cfg)

    def found(t: pd.DataFrame) -> np.ndarray:
        return t.set_index("object_id").loc[injected, "rank"].to_numpy() <= top

    pipeline, latent_only = found(table), found(latent)
    score = pca_knn_reference(cubes)
    reference = score[rows] >= np.sort(score)[-top]
    top5 = int(0.05 * len(cubes))
    in_top5 = table.set_index("object_id").loc[injected, "rank"].to_numpy() <= top5
    print(f"\ninjected artefacts in the top 5%: default pipeline {in_top5.mean():.2f}, "
          f"PCA reference {(score[rows] >= np.sort(score)[-top5]).mean():.2f}")
    print(f"\ninjected artefacts in the top 10% ({len(rows)} of {len(cubes)} objects): "
          f"pipeline (residual statistics) {pipeline.mean():.2f}, latent kNN/LOF/iforest "
          f"{latent_only.mean():.2f}, PCA of raw pixels + kNN {reference.mean():.2f}")
    for kind in ("dead_band", "trail", "cosmic_rays"):
        print(f"  {kind:<12} pipeline {pipeline[kinds == kind].mean():.2f}  latent "
              f"{latent_only[kinds == kind].mean():.2f}  PCA {reference[kinds == kind].mean():.2f}")
    assert pipeline.mean() > 0.5, "most injected artefacts must rank in the top 10%"
    assert pipeline.mean() > reference.mean()

    assert len(table) == len(cubes) and list(table["rank"]) == list(range(1, len(cubes) + 1))
    assert table["outlier_score"].is_monotonic_decreasing
    assert table["outlier_score"].between(0, 1).all() and table["is_outlier"].sum() == 15
    assert "plots/outlier_gallery.png" in gallery
    assert set(columns["object_id"]) == set(catalog["object_id"])
    assert {"outlier_score", "outlier_rank", "reconstruction_error"} <= set(columns)
    # each outlier says which statistic ranked it: the injected ones, what was injected
    why = table.set_index("object_id").loc[injected, "explained_by"]
    assert why.str.startswith("residual: ").all()
    for kind, expected in (("dead_band", ("residual_energy", "residual_line", "flat_run")),
                           ("trail", ("straight_line", "residual_line", "fine_segment",
                                      "residual_energy")),
                           ("cosmic_rays", ("sharp_pixel",))):
        named = why[kinds == kind].str.split(": ").str[-1]
        assert named.str.startswith(expected).mean() >= 0.6, (kind, list(named))
    assert set(statistics["object_id"]) == set(catalog["object_id"])
    assert {"sharp_pixel", "residual_line", "flat_run_one_band",
            "reconstruction_error"} <= set(statistics.columns)


def test_lookalikes_of_an_artefact_are_artefacts_of_its_kind(injected, capsys):
    """The index joins the embeddings with the anomaly signature of the analyse run's stamp
    statistics (index.vectors = "auto", the default): from an injected artefact, most of the
    neighbours that could share its kind do, by id and from its FITS file as a user holds it.
    The embeddings alone scatter the artefacts among the galaxies."""
    from hyrax_mlops.search import Searcher
    from hyrax_mlops.stages.infer import read_embeddings

    folder, cfg, run, rows, kinds, cubes, catalog = injected
    ids = catalog["object_id"].astype(str).to_numpy()
    kind_of = dict(zip(ids[rows], kinds, strict=True))
    k = min(np.unique(kinds, return_counts=True)[1]) - 1  # all the others of the rarest kind

    def same_kind(searcher) -> float:
        shares = []
        for oid, hits in zip(ids[rows], searcher.by_id(list(ids[rows]), k + 1), strict=True):
            others = [o for o in hits["object_id"] if o != oid][:k]
            shares.append(np.mean([kind_of.get(o) == kind_of[oid] for o in others]))
        return float(np.mean(shares))

    with in_store(folder):
        infer_run = mlflow.get_run(run.run_id).data.tags["hyrax.input.embeddings"]
        knn_only = hm.analyse(cfg, {"analyse.outlier_methods": ["knn"]}, embeddings=infer_run)
        with pytest.raises(LineageError, match="measured no stamp statistics"):
            hm.index(cfg, embeddings=infer_run, analysis=knn_only.run_id)
        capsys.readouterr()
        # a user's command: the default finds the newest analyse run that measured statistics
        assert main(["index", "--embeddings", infer_run]) == 0
        said = capsys.readouterr().out
        joined_run = hm.index(cfg, embeddings=infer_run)  # the same run, reused
        plain_run = hm.index(cfg, {"index.vectors": "embeddings"}, embeddings=infer_run)
        tags = mlflow.get_run(joined_run.run_id).data.tags
        recipe = json.loads(Path(ArtifactCache.of(cfg).fetch(joined_run.run_id, "index.json"))
                            .read_text())["signature"]
        joined, plain = Searcher(joined_run.run_id, cfg), Searcher(plain_run.run_id, cfg)
        joined_share, plain_share = same_kind(joined), same_kind(plain)
        ray = ids[rows][kinds == "cosmic_rays"][0]
        from_file = joined.by_cutout(str(folder / "cutouts" / f"{ray}.fits"), k + 1)
        emb_ids, vectors = read_embeddings(infer_run)
        plain_query = joined.by_vector(vectors[0], 3)[0]
        capsys.readouterr()
        assert main(["search", "--run", joined_run.run_id, "--id", ray, "-k", "3"]) == 0
        searched = capsys.readouterr()
    print(f"\nlook-alike precision ({k} neighbours, {len(rows)} artefacts): joined index "
          f"{joined_share:.2f}, embeddings alone {plain_share:.2f}")
    assert joined_run.reused and joined_run.run_id in said
    assert f"anomaly signature (the stamp statistics of analyse run {run.run_id})" in said
    assert tags["hyrax.index.vectors"] == "joined"
    assert tags["hyrax.input.statistics"] == run.run_id
    assert {"sharp_pixel", "straight_line", "residual_energy"} <= set(recipe["names"])
    assert recipe["embedding_dim"] == SMALL_MODEL["model.latent_dim"]
    assert mlflow.get_run(plain_run.run_id).data.tags["hyrax.index.vectors"] == "embeddings"
    assert joined_share >= 0.6 and joined_share > plain_share + 0.3
    # the cutout file, measured with the run's model as analyse measured it: itself first
    assert from_file["object_id"].iloc[0] == ray
    assert from_file["distance"].iloc[0] == pytest.approx(0, abs=1e-4)
    assert (from_file["object_id"].iloc[1:].map(kind_of) == "cosmic_rays").mean() >= 0.5
    # a plain embedding is an object that departs in nothing
    assert plain_query["object_id"].iloc[0] == str(emb_ids[0])
    # the terminal says which index answered, and shows why each neighbour is one
    assert f"index run {joined_run.run_id}, embeddings joined" in searched.err
    header, first = searched.out.splitlines()[:2]
    assert header.split()[:5] == ["rank", "object_id", "distance", "outlier_score",
                                  "outlier_why"]
    assert first.split()[:2] == ["1", ray] and float(first.split()[2]) == 0.0
    assert first.split()[4] == "knn"  # the newest analysis's reason: the kNN-only run's


def test_outlier_scores_match_direct_sklearn_calls():
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

    from hyrax_mlops.analysis.outliers import outlier_table, rank_normalise

    x = np.random.default_rng(0).normal(size=(200, 6))
    x[:3] += 8  # three far-away points
    table = outlier_table(np.array([f"o{i}" for i in range(200)]), x, ["knn", "lof", "iforest"],
                          k=10, seed=1, top_fraction=0.05).set_index("object_id")
    lof = -LocalOutlierFactor(n_neighbors=10).fit(x).negative_outlier_factor_
    forest = -IsolationForest(n_estimators=200, random_state=1).fit(x).score_samples(x)
    ids = [f"o{i}" for i in range(200)]
    np.testing.assert_allclose(table.loc[ids, "lof_score"], lof)
    np.testing.assert_allclose(table.loc[ids, "iforest_score"], forest)
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    knn = np.sort(dist, axis=1)[:, 1:11].mean(axis=1)  # naive: sort every row
    np.testing.assert_allclose(table.loc[ids, "knn_score"], knn, rtol=1e-6)
    assert set(table.index[table["rank"] <= 3]) == {"o0", "o1", "o2"}
    np.testing.assert_allclose(rank_normalise(np.array([3.0, 1.0, 2.0, np.nan])),
                               [1.0, 1 / 3, 2 / 3, 0.0])


# --------------------------------------------------------------------------- quality


def test_latent_quality_against_measured_morphology(demo_sandbox, tmp_path, capsys):
    result, cfg = demo_sandbox
    cubes, catalog = demo_stamps(result, cfg)
    compact = (catalog["r_half"] < catalog["r_half"].quantile(0.3)) & \
              (catalog["peak"] > catalog["peak"].median())
    labelled = catalog[["object_id", "flux", "r_half", "peak"]].assign(
        morphology=np.where(compact, "compact", "extended"))
    write_user_dir(tmp_path, cubes, labelled)
    dataset = hm.ingest(cfg, {"ingest.cutouts_dir": str(tmp_path / "cutouts"),
                              "ingest.catalog": str(tmp_path / "catalog.csv")}).run_id
    quality = {"analyse.analyses": ["quality"], "analyse.label_column": "morphology"}
    scored = {}
    for name, train_run in (("demo", result["train"].run_id),
                            ("one_epoch", hm.train(cfg, {"train.epochs": 1},
                                                   dataset=dataset).run_id)):
        infer = hm.infer(cfg, train_run=train_run, dataset=dataset).run_id
        mapped = hm.reduce(cfg, {"reduce.methods": ["pca"], "reduce.dims": [2]},
                           embeddings=infer).run_id
        scored[name] = (infer, hm.analyse(cfg, quality, embeddings=infer, map=mapped).run_id)

    infer, analysed = scored["demo"]
    on_analyse = mlflow.get_run(analysed).data.metrics
    on_infer = mlflow.get_run(infer).data
    base_rate = compact.mean()
    chance = base_rate ** 2 + (1 - base_rate) ** 2  # neighbours drawn at random
    with capsys.disabled():
        print(f"\nkNN purity {on_analyse['quality.knn_purity']:.3f} (chance {chance:.3f}), "
              f"map {on_analyse['quality.map_knn_purity']:.3f}, silhouette "
              f"{on_analyse['quality.silhouette']:.3f}, map neighbourhood recall "
              f"{on_analyse['quality.map_neighbourhood_recall']:.3f}")
    assert 0 < on_analyse["quality.knn_purity"] <= 1
    assert on_analyse["quality.knn_purity_chance"] == pytest.approx(
        (compact.sum() * (compact.sum() - 1) + (~compact).sum() * ((~compact).sum() - 1))
        / (300 * 299))
    assert on_analyse["quality.knn_purity"] > on_analyse["quality.knn_purity_chance"]
    assert -1 <= on_analyse["quality.silhouette"] <= 1
    assert 0 <= on_analyse["quality.map_neighbourhood_recall"] <= 1
    # the metrics stay on the run that measured them: compare joins them to the infer run
    assert not any(k.startswith("quality.") for k in on_infer.metrics)
    joined = hm.compare([infer]).iloc[0]
    assert (joined["label"], joined["scored"]) == ("morphology", "analyse")
    for key in ("knn_purity", "silhouette", "map_knn_purity"):
        assert joined[key] == pytest.approx(on_analyse[f"quality.{key}"]), key
    by_class = artifact_table(analysed, "analysis/quality_by_class.csv", cfg).set_index("label")
    assert by_class["n_objects"].to_dict() == {"compact": compact.sum(),
                                               "extended": (~compact).sum()}
    # compact sources find compact neighbours more often than their share of the sample
    assert by_class.loc["compact", "knn_purity"] > base_rate

    # models compared by latent quality, their validation loss beside
    table = hm.compare([scored["one_epoch"][0], scored["demo"][1]])
    assert list(table["knn_purity"]) == sorted(table["knn_purity"], reverse=True)
    assert set(table["infer_run"]) == {scored["one_epoch"][0], infer}
    for _, row in table.iterrows():
        loss = mlflow.get_run(row["model_run"]).data.metrics["best_val_loss"]
        assert row["val_loss"] == pytest.approx(loss)
    capsys.readouterr()
    assert main(["compare", scored["demo"][0], scored["one_epoch"][0]]) == 0
    out = capsys.readouterr().out
    assert out.index(table["infer_run"][0]) < out.index(table["infer_run"][1])
    assert "knn purity" in out and "val loss" in out


# --------------------------------------------------------------------------- clusters


def test_the_demo_analysis_says_what_it_found(demo_sandbox, capsys, monkeypatch):
    """The default `analyse` on the demo finds clusters (a UMAP map of the latent space, where
    HDBSCAN on the raw latent space called every object noise), says so with its top outliers
    and where the gallery is; a later quality-only run keeps those columns in search results
    and in a running app's colour-by columns, without a restart."""
    import dash_app.data

    result, cfg = demo_sandbox
    infer = result["infer"].run_id
    monkeypatch.setattr(dash_app.data, "ANALYSES_RECHECK_S", 0.0)  # the app looks every time
    app = dash_app.data.AppData(cfg)  # an app already open on the demo's map
    assert "outlier_score" not in app.reduction(result["reduce"].run_id).catalog
    experiment = ["--set", f"tracking.experiment={cfg.tracking.experiment}"]
    capsys.readouterr()
    assert main(["analyse", "--embeddings", infer, *experiment]) == 0
    out = capsys.readouterr().out  # the run's headline, then what it found
    assert out.startswith("analyse   ran")
    found = re.search(r"\n  clusters: (\d+) clusters, (\d+)% noise", out)
    assert found and int(found[1]) >= 2, out
    assert "UMAP 2D of latent (16D)" in out
    strongest = re.search(r"strongest: (XDF\d+) \((\d\.\d+)\)", out)
    assert strongest and "15 flagged" in out
    gallery = re.search(r"open (\S+outlier_gallery\.png)", out)
    assert gallery and Path(gallery[1]).stat().st_size > 0
    run = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                             filter_string="tags.`hyrax.stage` = 'analyse'")[0]
    assert run.data.metrics["clusters.n_clusters"] == int(found[1])
    # what to run next: its statistics joined into the index of the same embeddings
    assert out.rstrip().splitlines()[-1] == (
        f"  next: hyrax-mlops index --embeddings {infer} --analysis {run.info.run_id}   "
        "# look-alikes that depart the same way")
    top = artifact_table(run.info.run_id, "analysis/outliers.parquet", cfg).iloc[0]
    assert (top["object_id"], f"{top['outlier_score']:.3f}") == (strongest[1], strongest[2])

    # a later run of one analysis adds its columns; the earlier ones stay in search results
    later = hm.analyse(cfg, {"analyse.analyses": ["quality"]},  # the demo's colour label
                       embeddings=infer)
    assert re.search(r"\n  quality against 'colour': kNN purity 0\.\d{3} \(chance 0\.\d{3}\)",
                     str(later))
    hits = hm.search_by_id(result["index"].run_id, "XDF00001", 5, cfg)
    assert {"outlier_score", "cluster", "is_outlier", "label_purity"} <= set(hits.columns)
    assert hits["outlier_why"].str.startswith("residual: ").all()  # which statistic ranked it
    assert hits[["outlier_score", "cluster", "label_purity"]].notna().all().all()
    shown = app.reduction(result["reduce"].run_id).catalog.set_index("object_id")
    assert {"outlier_score", "cluster", "label_purity"} <= set(shown.columns)
    assert shown.loc[strongest[1], "outlier_score"] == pytest.approx(float(strongest[2]), abs=5e-4)

    # where in the stamp: each flagged outlier's residual map, a PNG, in search results and on
    # the app's hover card; none for the others, and never offered as a colour
    import base64
    import io

    from PIL import Image

    from dash_app import thumbs

    maps = shown["residual_map"]
    assert set(maps.dropna().index) == set(shown.index[shown["is_outlier"].astype(bool)])
    assert maps.notna().sum() == 15
    png = Image.open(io.BytesIO(base64.b64decode(maps[strongest[1]].split(",", 1)[1])))
    assert png.size == (96, 96) and np.asarray(png).std() > 0  # a picture, not a blank
    assert "residual_map" not in app.reduction(result["reduce"].run_id).columns()
    around = hm.search_by_id(result["index"].run_id, strongest[1], 10, cfg)  # itself first
    flagged = around["is_outlier"].astype(bool)
    assert around["object_id"].iloc[0] == strongest[1] and flagged.iloc[0]
    assert around.loc[flagged, "residual_map"].str.startswith("data:image/png;base64,").all()
    assert around.loc[~flagged, "residual_map"].isna().all() and (~flagged).any()
    red = app.reduction(result["reduce"].run_id)
    row = int(red.rows_of([strongest[1]])[0])
    tile = thumbs.residual_tile(red.catalog, row, strongest[1])[0].to_plotly_json()
    img = tile["props"]["children"][0].to_plotly_json()["props"]
    assert img["src"] == maps[strongest[1]] and img["alt"] == f"residual of {strongest[1]}"
    other = int(red.rows_of([shown.index[~shown["is_outlier"].astype(bool)][0]])[0])
    assert thumbs.residual_tile(red.catalog, other, "x") == []

    # given a map (as the pipeline gives its own), "auto" clusters that map
    from sklearn.cluster import HDBSCAN

    mapped = result["reduce"].run_id
    on_map = hm.analyse(cfg, {"analyse.analyses": ["clusters"]}, embeddings=infer, map=mapped)
    assert mlflow.get_run(on_map.run_id).data.tags["hyrax.analyse.cluster_space"] == "UMAP 2D"
    clusters = artifact_table(on_map.run_id, "analysis/clusters.parquet", cfg)
    umap = artifact_table(mapped, "reductions/umap_2d.parquet", cfg).set_index("object_id")
    direct = HDBSCAN(min_cluster_size=10, min_samples=5, copy=True).fit_predict(
        umap.loc[clusters["object_id"], ["x", "y"]].to_numpy())
    np.testing.assert_array_equal(clusters["cluster"], direct)



def test_clusters_on_the_map_and_on_catalog_columns(demo_sandbox):
    from sklearn.cluster import DBSCAN, HDBSCAN

    result, cfg = demo_sandbox
    infer, mapped = result["infer"].run_id, result["reduce"].run_id
    run = hm.analyse(cfg, {"analyse.cluster_on": "map"}, embeddings=infer, map=mapped)
    clusters = artifact_table(run.run_id, "analysis/clusters.parquet", cfg)
    umap = artifact_table(mapped, "reductions/umap_2d.parquet", cfg).set_index("object_id")
    xy = umap.loc[clusters["object_id"], ["x", "y"]].to_numpy()
    direct = HDBSCAN(min_cluster_size=10, min_samples=5, copy=True).fit_predict(xy)
    np.testing.assert_array_equal(clusters["cluster"], direct)
    summary = artifact_table(run.run_id, "analysis/cluster_summary.csv", cfg)
    assert summary["n_objects"].sum() == 300 and set(summary["cluster"]) == set(direct)
    metrics = mlflow.get_run(run.run_id).data.metrics
    assert metrics["clusters.n_clusters"] == len(set(direct) - {-1}) >= 2
    columns = artifact_table(run.run_id, "analysis/columns.parquet", cfg)
    assert {"object_id", "outlier_score", "is_outlier", "cluster"} <= set(columns)
    assert len(columns) == 300 and columns["object_id"].is_unique
    assert mlflow.get_run(run.run_id).data.tags["hyrax.input.map"] == mapped
    assert hm.analyse(cfg, {"analyse.cluster_on": "map"}, embeddings=infer, map=mapped).reused
    # the MLproject door passes the same inputs (its launch would be this reused run)
    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["analyse"]
    assert {"embeddings", "map"} <= set(project["parameters"])
    assert entrypoint("analyse", ["--overrides", f"analyse.cluster_on=map "
                                  f"tracking.experiment={cfg.tracking.experiment}",
                                  "--embeddings", infer, "--map", mapped]) == 0

    over = {"analyse.analyses": ["clusters"], "analyse.cluster_on": "catalog",
            "analyse.cluster_columns": ["flux_r", "flux_g", "r_half"],
            "analyse.cluster_method": "dbscan", "analyse.eps": 0.4}
    run = hm.analyse(cfg, over, embeddings=infer)
    clusters = artifact_table(run.run_id, "analysis/clusters.parquet", cfg)
    catalog = demo_stamps(result, cfg)[1].set_index("object_id").loc[clusters["object_id"]]
    z = catalog[["flux_r", "flux_g", "r_half"]].to_numpy()
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    np.testing.assert_array_equal(clusters["cluster"], DBSCAN(eps=0.4, min_samples=5)
                                  .fit_predict(z))
    umap_first = hm.analyse(cfg, {**over, "analyse.cluster_umap_first": True, "analyse.eps": 0.5},
                            embeddings=infer)
    labels = artifact_table(umap_first.run_id, "analysis/clusters.parquet", cfg)["cluster"]
    assert labels.max() >= 1  # UMAP of the catalog, then DBSCAN: at least two groups
    assert "plots/clusters.png" in {
        f.path for f in mlflow.MlflowClient().list_artifacts(umap_first.run_id, "plots")}


# --------------------------------------------------------------------------- crossmatch


def galaxy_key(name) -> str:
    """'NGC 7068' and 'NGC7068', 'PGC 65535' and 'PGC065535' name the same galaxy."""
    s = str(name).upper().replace(" ", "").replace("_", "")
    m = re.match(r"^(PGC|UGC|NGC|IC|UGCA)0*(\d+)([A-Z]?)$", s)
    return f"{m[1]}{int(m[2])}{m[3]}" if m else s


@pytest.fixture(scope="module")
def real_catalogs():
    transients = pd.read_csv(XMATCH / "oac_transients.csv")
    galaxies = pd.read_csv(XMATCH / "gwgc_galaxies.csv")
    return transients, galaxies


def separations(transients, galaxies) -> np.ndarray:
    """Naive: every transient-galaxy separation (arcsec), by the haversine formula."""
    ra1, dec1 = np.radians(transients["ra"].to_numpy())[:, None], \
        np.radians(transients["dec"].to_numpy())[:, None]
    ra2, dec2 = np.radians(galaxies["RAJ2000"].to_numpy())[None], \
        np.radians(galaxies["DEJ2000"].to_numpy())[None]
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600


RADIUS = 60.0  # arcsec: supernovae sit up to about an arcminute from nearby hosts' centres


def test_nearest_crossmatch_finds_the_real_host_galaxies(real_catalogs):
    transients, galaxies = real_catalogs
    index, sep = match_nearest(transients["ra"], transients["dec"], galaxies["RAJ2000"],
                               galaxies["DEJ2000"], RADIUS)
    d = separations(transients, galaxies)
    nearest = d.argmin(axis=1)
    within = d.min(axis=1) <= RADIUS
    np.testing.assert_array_equal(index >= 0, within)  # matched exactly when within the radius
    np.testing.assert_array_equal(index[within], nearest[within])
    np.testing.assert_allclose(sep[within], d.min(axis=1)[within], atol=1e-3)
    assert np.isnan(sep[~within]).all()

    hosted = transients["host"].notna().to_numpy()
    keys = galaxies["NED_name"].map(galaxy_key).to_numpy()
    right = np.array([index[i] >= 0 and keys[index[i]] == galaxy_key(h)
                      for i, h in enumerate(transients["host"])])
    found = hosted & (index >= 0)
    print(f"\nnearest within {RADIUS:.0f}\": {found.sum()} of {hosted.sum()} transients with a "
          f"GWGC host matched, {right[found].mean():.3f} of them to the host OAC names; "
          f"{(index[~hosted] >= 0).sum()} of {(~hosted).sum()} unrelated transients matched")
    assert found.sum() > 0.7 * hosted.sum()  # the rest lie further out in big nearby hosts
    assert right[found].mean() > 0.97
    assert (index[~hosted] < 0).all()  # no GWGC galaxy near them: nothing is made up
    assert pd.Series(index[index >= 0]).duplicated().any()  # several SNe share a host


def test_greedy_crossmatch_is_one_to_one_and_matches_a_naive_greedy(real_catalogs):
    transients, galaxies = real_catalogs
    index, sep = match_greedy(transients["ra"], transients["dec"], galaxies["RAJ2000"],
                              galaxies["DEJ2000"], RADIUS)
    matched = index >= 0
    assert not pd.Series(index[matched]).duplicated().any()
    assert (sep[matched] <= RADIUS).all()

    d = separations(transients, galaxies)  # naive greedy: the closest free pair, repeatedly
    expected = np.full(len(transients), -1)
    d = np.where(d <= RADIUS, d, np.inf)
    while np.isfinite(d).any():
        i, j = np.unravel_index(np.argmin(d), d.shape)
        expected[i] = j
        d[i, :], d[:, j] = np.inf, np.inf
    np.testing.assert_array_equal(index, expected)
    nearest, _ = match_nearest(transients["ra"], transients["dec"], galaxies["RAJ2000"],
                               galaxies["DEJ2000"], RADIUS)
    assert matched.sum() < (nearest >= 0).sum()  # shared hosts went to one transient each


def test_greedy_takes_the_brightest_reference_first_and_scores_magnitudes():
    # a constructed case: two references 1.5" apart and two objects among them
    ra, dec = np.array([150.0, 150.0 + 1.2 / 3600]), np.array([2.0, 2.0])
    ref_ra, ref_dec = np.array([150.0 + 1.0 / 3600, 150.0 - 0.5 / 3600]), np.array([2.0, 2.0])
    # by position alone, object 0 is closest to reference 1 and object 1 to reference 0
    by_position, _ = match_greedy(ra, dec, ref_ra, ref_dec, 3.0)
    np.testing.assert_array_equal(by_position, [1, 0])
    # magnitudes say object 0 is reference 0's counterpart, object 1 reference 1's
    mag, ref_mag = np.array([16.0, 19.0]), np.array([16.1, 19.2])
    with_mags, _ = match_greedy(ra, dec, ref_ra, ref_dec, 3.0, mag, ref_mag)
    np.testing.assert_array_equal(with_mags, [0, 1])
    # brightest reference first: with one object, the bright reference takes it
    alone, _ = match_greedy(ra[:1] + 0.75 / 3600, dec[:1], ref_ra, ref_dec, 3.0,
                            None, np.array([20.0, 15.0]))
    np.testing.assert_array_equal(alone, [1])


def test_crossmatch_analysis_carries_the_reference_label(real_catalogs, tmp_path):
    transients, galaxies = real_catalogs
    reference = tmp_path / "gwgc.parquet"
    galaxies.to_parquet(reference)
    cfg = load_config(None, {"analyse.reference": str(reference),
                             "analyse.reference_ra": "RAJ2000", "analyse.reference_dec": "DEJ2000",
                             "analyse.reference_label": "NED_name",
                             "analyse.match_radius_arcsec": RADIUS}).analyse
    ids = transients["name"].astype(str).to_numpy()
    ctx = AnalysisContext(cfg, ids, np.zeros((len(ids), 2), np.float32), transients)
    out = crossmatch(ctx)
    table = out.tables["analysis/crossmatch.parquet"]
    assert list(table.columns) == ["object_id", "matched", "ref_index", "ref_id",
                                   "separation_arcsec", "ref_label"]
    hit = table[table["matched"]]
    assert (galaxies["NED_name"].to_numpy()[hit["ref_index"]] == hit["ref_label"]).all()
    assert out.metrics["crossmatch.n_matched"] == len(hit)
    assert set(out.columns) >= {"ref_label", "ref_separation_arcsec"}

    bad = cfg.model_copy(update={"reference_label": "NED_nam"})
    with pytest.raises(ConfigError, match=r"'analyse.reference_label'.*Did you mean 'NED_name'"):
        crossmatch(AnalysisContext(bad, ids, ctx.vectors, transients))


def test_a_changed_reference_catalog_is_not_served_from_the_cache(demo_sandbox, tmp_path):
    result, cfg = demo_sandbox
    reference = tmp_path / "gwgc.csv"
    reference.write_text((XMATCH / "gwgc_galaxies.csv").read_text())
    over = {"analyse.analyses": ["crossmatch"], "analyse.reference": str(reference),
            "analyse.reference_ra": "RAJ2000", "analyse.reference_dec": "DEJ2000"}
    first = hm.analyse(cfg, over, embeddings=result["infer"].run_id)
    assert hm.analyse(cfg, over, embeddings=result["infer"].run_id).reused
    run = mlflow.get_run(first.run_id)
    assert "no object has ra/dec" in run.data.tags["hyrax.analyse.notes"]  # XDF has no WCS
    assert run.data.metrics["crossmatch.n_matched"] == 0
    reference.write_text(reference.read_text().replace("IC0591", "IC591"))
    again = hm.analyse(cfg, over, embeddings=result["infer"].run_id)
    assert not again.reused and again.run_id != first.run_id


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("override", "message"), [
    ({"analyse.cluster_on": "catalog"}, r"'analyse'.*analyse.cluster_columns"),
    ({"analyse.outlier_methods": ["knn", "svm"]}, r"'analyse.outlier_methods.1'.*'knn'"),
    ({"analyse.top_fraction": 1.5}, r"'analyse.top_fraction'"),
    ({"analyse.match_method": "closest"}, r"'analyse.match_method'.*'nearest' or 'greedy'"),
    ({"analyse.outlier_k": 0}, r"'analyse.outlier_k'"),
    ({"analyse.catalog_mag": "mag_r"}, r"set analyse.reference_mag"),
    ({"analyse.clusteron": "map"}, r"'analyse.clusteron'.*Did you mean 'analyse.cluster_on'"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_catalog_columns_are_checked_before_the_run(demo_sandbox):
    result, cfg = demo_sandbox
    before = len(mlflow.search_runs(experiment_names=[cfg.tracking.experiment]))
    with pytest.raises(ConfigError, match=r"'analyse.label_column'.*Did you mean 'r_half'"):
        hm.analyse(cfg, {"analyse.analyses": ["quality"], "analyse.label_column": "r_halff"},
                   embeddings=result["infer"].run_id)
    with pytest.raises(ConfigError, match=r"'analyse.reference_ra' = 'RAJ200'.*'RAJ2000'"):
        hm.analyse(cfg, {"analyse.analyses": ["crossmatch"],
                         "analyse.reference": str(XMATCH / "gwgc_galaxies.csv"),
                         "analyse.reference_ra": "RAJ200"}, embeddings=result["infer"].run_id)
    with pytest.raises(ConfigError, match=r"cluster_on' = \"map\" needs a reduce run"):
        from hyrax_mlops.stages import analyse

        analyse.run(hm.load_config(cfg, {"analyse.cluster_on": "map"}), result["infer"].run_id)
    assert len(mlflow.search_runs(experiment_names=[cfg.tracking.experiment])) == before
