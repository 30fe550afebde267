"""The README's "Your own cutouts", verbatim, on real FITS stamps with a WCS and a catalog of
only `object_id` (64-bit survey ids and zero-padded ids) and `file`.

The stamps are cut, at test time, from the real HST Frontier Fields images of Abell 2744 in
tests/data/sky (Cutout2D keeps each stamp's WCS): one at each of the 22 real sources in
tests/data/sky/catalog.csv and the rest on a grid. The pipeline must finish with the README's
TOML (paths substituted; only training is shortened), take every position from the WCS, and
the maps, search and crossmatch must then work on those positions.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hyrax_mlops as hm

from conftest import in_store

DATA = Path(__file__).parent / "data"
SKY = DATA / "sky"
README = Path(__file__).parent.parent / "README.md"
STAMP = 24
FAST = ["--set", "train.epochs=2", "--set", "model.latent_dim=8",
        "--set", "model.widths=[8,16,16]", "--set", "tracking.experiment=own-cutouts"]


def readme_toml(cutouts_dir: Path, catalog: Path) -> str:
    """The TOML block under "## Your own cutouts" in README.md, with our two paths in it."""
    section = README.read_text().split("## Your own cutouts", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    assert 'cutouts_dir = "/data/my_cutouts"' in block and 'catalog = "/data/my_catalog.csv"' \
        in block, "README's example changed: update this test with it"
    return (block.replace("/data/my_cutouts", str(cutouts_dir))
            .replace("/data/my_catalog.csv", str(catalog)))


def cut_stamps(folder: Path) -> pd.DataFrame:
    """Real stamps with their WCS, and the truth: object_id (text), file, centre ra/dec."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS

    sources = pd.read_csv(SKY / "catalog.csv").dropna(subset=["image"])
    rows = []
    serial = 36411448540270969  # an HSC-like 64-bit id (> 2**53: a float would change it)
    for image in sorted(SKY.glob("*.fits")):
        with fits.open(image) as hdul:
            data, wcs = hdul[0].data.astype(np.float32), WCS(hdul[0].header)
        here = sources[sources["image"] == image.name]
        centres = [SkyCoord(r.ra, r.dec, unit="deg", frame="fk5") for r in here.itertuples()]
        grid = np.linspace(STAMP, data.shape[0] - STAMP, 4)
        centres += [wcs.pixel_to_world(x, y) for x in grid for y in grid]
        for position in centres:
            cut = Cutout2D(data, position, STAMP, wcs=wcs, mode="partial", fill_value=0.0)
            serial += 1
            oid = str(serial) if len(rows) % 3 else f"{len(rows):06d}"  # some zero-padded
            name = f"stamp_{len(rows):03d}.fits"
            fits.PrimaryHDU(cut.data, header=cut.wcs.to_header()).writeto(folder / name)
            centre = cut.wcs.pixel_to_world((STAMP - 1) / 2, (STAMP - 1) / 2).icrs
            rows.append({"object_id": oid, "file": name, "ra": centre.ra.deg,
                         "dec": centre.dec.deg})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def own_pipeline(tmp_path_factory):
    from hyrax_mlops.cli import main

    root = tmp_path_factory.mktemp("own")
    (root / "my_cutouts").mkdir()
    truth = cut_stamps(root / "my_cutouts")
    catalog = root / "my_catalog.csv"
    truth[["object_id", "file"]].to_csv(catalog, index=False)  # ids and files, nothing else
    (root / "my.toml").write_text(readme_toml(root / "my_cutouts", catalog))
    printed = io.StringIO()
    with in_store(root), contextlib.redirect_stdout(printed):
        code = main(["pipeline", "-c", str(root / "my.toml"), *FAST])
    with in_store(root):
        yield root, truth, code, printed.getvalue()


def _runs(stage: str):
    import mlflow

    return mlflow.search_runs(search_all_experiments=True,
                              filter_string=f"tags.`hyrax.stage` = '{stage}'")


def test_readme_flow_finishes_with_positions_from_the_wcs(own_pipeline, capsys):
    root, truth, code, printed = own_pipeline
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.tracking import ArtifactCache

    assert code == 0
    with in_store(root):
        pipe = _runs("pipeline")
        assert list(pipe["status"]) == ["FINISHED"]
        ingest = _runs("ingest").iloc[0]
        cfg = hm.load_config(root / "my.toml")
        data = Dataset(ArtifactCache.of(cfg).fetch(ingest.run_id, ARTIFACT_DIR))
    got = data.catalog.set_index("object_id")
    assert sorted(got.index) == sorted(truth["object_id"])  # every id exactly as written
    assert "000000" in got.index  # the first object: the search the terminal suggests
    assert f"--id {got.index[0]} -k 10" in printed and "36411448540270971" in got.index
    want = truth.set_index("object_id").loc[got.index]
    assert np.allclose(got["ra"], want["ra"], atol=1e-7)
    assert np.allclose(got["dec"], want["dec"], atol=1e-7)


def test_maps_fall_back_to_an_existing_colour_column(own_pipeline):
    import mlflow

    root, truth, _, _ = own_pipeline
    with in_store(root):
        reduce = _runs("reduce").iloc[0]
        assert reduce["status"] == "FINISHED"
        note = reduce["tags.hyrax.note.color_by"]
        assert "reduce.color_by = 'flux' is not a catalog column" in note
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(reduce.run_id,
                                                                     "reductions")}
        assert "reductions/pca_2d.parquet" in arts and "reductions/umap_2d.parquet" in arts


def test_search_returns_neighbours_with_wcs_positions(own_pipeline):
    root, truth, _, _ = own_pipeline
    with in_store(root):
        index = _runs("index").iloc[0]
        oid = truth["object_id"].iloc[1]
        hits = hm.search_by_id(index.run_id, oid, k=5)
    assert hits["object_id"].iloc[0] == oid
    assert len(hits) == 5 and hits["distance"].is_monotonic_increasing
    row = truth.set_index("object_id").loc[hits["object_id"]]
    assert np.allclose(hits["ra"].to_numpy(float), row["ra"].to_numpy(), atol=1e-7)


def test_crossmatch_works_on_positions_taken_from_the_wcs(own_pipeline):
    root, truth, _, _ = own_pipeline
    with in_store(root):
        infer = _runs("infer").iloc[0]
        result = hm.analyse(root / "my.toml", {
            "analyse.analyses": ["crossmatch"], "analyse.reference": str(SKY / "catalog.csv"),
            "analyse.match_radius_arcsec": 0.5, "tracking.experiment": "own-cutouts"},
            embeddings=infer.run_id)
        import mlflow

        metrics = mlflow.get_run(result.run_id).data.metrics
    from astropy.coordinates import SkyCoord

    sources = pd.read_csv(SKY / "catalog.csv")
    _, sep, _ = SkyCoord(truth["ra"], truth["dec"], unit="deg").match_to_catalog_sky(
        SkyCoord(sources["ra"], sources["dec"], unit="deg", frame="fk5"))
    expected = int((sep.arcsec < 0.5).sum())  # the 22 source stamps, and any grid stamp on one
    assert expected >= 22
    assert metrics["crossmatch.n_matched"] == expected
    assert metrics["crossmatch.median_separation_arcsec"] < 0.1


def test_quality_without_a_label_column_is_refused_before_any_run(own_pipeline):
    """The demo's `colour` is quality's label when none is set; a user's own catalog has no
    such label, so "quality" without analyse.label_column stops with the fix, before a run."""
    from hyrax_mlops.errors import ConfigError

    root, _, _, _ = own_pipeline
    with in_store(root):
        before = len(_runs("analyse")), len(_runs("pipeline"))
        with pytest.raises(ConfigError, match=r"'analyse.label_column' is required.*Fix: --set"):
            hm.analyse(root / "my.toml", {"analyse.analyses": ["quality"],
                                          "tracking.experiment": "own-cutouts"},
                       embeddings=_runs("infer").iloc[0].run_id)
        with pytest.raises(ConfigError, match=r"'analyse.label_column' is required"):
            hm.pipeline(root / "my.toml", {"pipeline.analyse": True,
                                           "analyse.analyses": ["outliers", "quality"]})
        assert (len(_runs("analyse")), len(_runs("pipeline"))) == before
