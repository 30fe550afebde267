"""Map figures and selections, checked against plain numpy on synthetic maps of known shape."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as MplPath

from dash_app.data import distinct_runs
from dash_app.figures import (
    OVERLAYS,
    View,
    hover_fields,
    map_2d,
    map_3d,
    plural,
    select_rows,
    stratified_sample,
)
from dash_app.reference import match
from dash_app.runs_view import runs_table


def synthetic(n: int, seed: int = 0, dims: int = 2):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.normal(size=(n, dims)).astype(np.float32),
                         columns=["x", "y", "z"][:dims])
    table["row"] = rng.permutation(n)
    catalog = pd.DataFrame({"object_id": [f"O{i:07d}" for i in range(n)],
                            "flux": rng.lognormal(3, 1, n),
                            "kind": rng.choice(["star", "galaxy", "qso"], n, p=[.2, .7, .1])})
    return table, catalog


def test_points_below_the_limit_and_density_above_it_with_zoom_back_to_points():
    table, catalog = synthetic(150_000)
    fig, info = map_2d(table, catalog, "flux", View(), max_points=100_000)
    assert info == {"mode": "density", "n_in_view": 150_000}
    assert fig.layout.images and fig.layout.images[0].source.startswith("data:image/png")
    assert len(fig.data[0].x) <= 2000  # only an invisible selection helper goes to the browser
    zoom = View(-0.1, 0.1, -0.1, 0.1)
    expected = int(((np.abs(table.x) <= 0.1) & (np.abs(table.y) <= 0.1)).sum())
    fig, info = map_2d(table, catalog, "flux", zoom, max_points=100_000)
    assert info == {"mode": "points", "n_in_view": expected}
    assert len(fig.data[0].x) == expected
    # customdata carries the object id of each drawn point
    drawn = pd.DataFrame({"x": fig.data[0].x, "y": fig.data[0].y, "id": fig.data[0].customdata})
    row = table.set_index("row").loc[catalog.set_index("object_id").index.get_indexer(
        drawn["id"][:5])]
    np.testing.assert_allclose(row["x"].to_numpy(), drawn["x"][:5].to_numpy())


def test_categorical_colour_draws_one_trace_per_category():
    table, catalog = synthetic(3000)
    fig, _ = map_2d(table, catalog, "kind", View())
    objects = [t for t in fig.data if t.name not in OVERLAYS]  # empty overlay slots
    assert sorted(t.name for t in objects) == ["galaxy", "qso", "star"]
    assert sum(len(t.x) for t in objects) == 3000


def test_box_and_lasso_selections_match_numpy():
    table, _ = synthetic(200_000)
    x, y, rows = table.x.to_numpy(), table.y.to_numpy(), table.row.to_numpy()
    box = select_rows(table, {"range": {"x": [0.5, -0.5], "y": [-1, 1]}})
    ref = rows[(np.abs(x) <= 0.5) & (np.abs(y) <= 1)]
    assert set(box) == set(ref)
    poly = {"x": [0, 1, 1.5, 0.2], "y": [0, -0.5, 1, 1.2]}
    lasso = select_rows(table, {"lassoPoints": poly})
    inside = MplPath(np.column_stack([poly["x"], poly["y"]])).contains_points(
        np.column_stack([x, y]))
    assert set(lasso) == set(rows[inside]) and len(lasso) > 1000


def test_3d_stratified_sample_keeps_every_class_and_states_its_size():
    table, catalog = synthetic(60_000, dims=3)
    fig, info = map_3d(table, catalog, "kind", max_points=5000)
    assert info["n_shown"] <= 5000 + 3 and "stratified sample by kind" in fig.layout.title.text
    shown = {t.name: len(t.x) for t in fig.data if t.name not in OVERLAYS}
    share = catalog["kind"].value_counts(normalize=True)
    for kind, n in shown.items():
        assert n / sum(shown.values()) == pytest.approx(share[kind], abs=0.02)
    values = np.r_[np.zeros(9990), np.ones(10)]  # a rare stratum survives sampling
    pos = stratified_sample(np.arange(10_000), values, 100)
    assert (values[pos] == 1).sum() >= 1


def test_reference_catalog_matches_by_id_and_by_sky_position():
    catalog = pd.DataFrame({"object_id": ["a", "b", "c"], "ra": [10.0, 10.01, 200.0],
                            "dec": [-5.0, -5.0, 30.0]})
    rows, msg = match(pd.DataFrame({"object_id": ["c", "zz"]}), catalog, 1.0)
    assert list(rows) == [2] and msg.startswith("1 of 2")
    ref = pd.DataFrame({"ra": [10.0 + 0.5 / 3600, 150.0], "dec": [-5.0, 0.0]})
    rows, msg = match(ref, catalog, radius_arcsec=1.0)
    assert list(rows) == [0] and msg.startswith("1 of 2")
    rows, msg = match(pd.DataFrame({"name": ["x"]}), catalog, 1.0)
    assert len(rows) == 0 and "object_id" in msg


def test_view_from_zoom_events_and_containment():
    full = View()
    zoomed = View.from_relayout({"xaxis.range[0]": -1, "xaxis.range[1]": 1,
                                 "yaxis.range[0]": 2, "yaxis.range[1]": 0}, full)
    assert (zoomed.x0, zoomed.x1, zoomed.y0, zoomed.y1) == (-1, 1, 2, 0)
    assert full.contains(zoomed) and not zoomed.contains(full)
    assert zoomed.contains(View(-0.5, 0.5, 0.5, 1.5)) and not zoomed.contains(View(-2, 0, 0, 1))
    assert View.from_relayout({"xaxis.autorange": True}, zoomed) == View()


def test_overlays_mark_the_given_rows_in_2d_and_3d():
    for dims, draw in ((2, lambda t, c, **kw: map_2d(t, c, "flux", View(), **kw)),
                       (3, lambda t, c, **kw: map_3d(t, c, "flux", **kw))):
        table, catalog = synthetic(500, dims=dims)
        fig, _ = draw(table, catalog, highlight=np.arange(10), neighbours=np.array([3, 7, 400]))
        overlays = {t.name: t for t in fig.data[-3:]}
        assert list(overlays) == list(OVERLAYS)
        assert sorted(overlays["selection"].customdata) == [f"O{i:07d}" for i in range(10)]
        assert sorted(overlays["neighbours"].customdata) == ["O0000003", "O0000007", "O0000400"]
        assert len(overlays["reference"].x) == 0
        row = table.set_index("row").loc[400]  # at the object's place on the map
        k = list(overlays["neighbours"].customdata).index("O0000400")
        assert overlays["neighbours"].x[k] == pytest.approx(row["x"])


def test_hover_leaves_out_missing_values_and_counts_read_naturally():
    catalog = pd.DataFrame({"object_id": ["a"], "flux": [12.345678], "ra": [np.nan],
                            "dec": [None], "band": [""]})
    assert hover_fields(catalog, 0, ["flux", "ra", "dec", "band"]) == [("flux", "12.35")]
    table = pd.DataFrame({"x": [0.0], "y": [0.0], "row": [0]})
    fig, _ = map_2d(table, catalog, None, View(), hover_columns=["flux", "ra", "dec"])
    assert fig.data[0].hovertext == ("<b>a</b><br>flux: 12.35",)
    assert "1 object in view" in fig.layout.title.text
    assert [plural(1, "run"), plural(0, "run"), plural(1234, "object")] == \
        ["1 run", "0 runs", "1,234 objects"]


def test_runs_grid_leaves_out_empty_columns_and_compare_defaults_differ():
    df = pd.DataFrame({"run_id": ["r1", "r2"], "status": ["FINISHED"] * 2,
                       "start_time": pd.to_datetime(["2026-01-01", "2026-01-02"]),
                       "tags.mlflow.runName": ["a", "b"], "tags.hyrax.stage": ["train"] * 2,
                       "params.data.batch_size": ["32", None], "params.unused": [np.nan, ""],
                       "metrics.val_loss": [1.5, np.nan], "metrics.never": [np.nan, np.nan]})
    rows, cols = runs_table(df)
    fields = [c["field"] for c in cols]
    assert "params.unused" not in fields and "metrics.never" not in fields
    assert rows[0]["metrics.val_loss"] == 1.5 and rows[0]["params.data.batch_size"] == "32"
    inputs = {"new": "emb1", "same": "emb1", "old": "emb2"}
    assert distinct_runs(["new", "same", "old"], inputs) == ["new", "old"]
    assert distinct_runs(["new", "same"], inputs) == ["new", "same"]
    assert distinct_runs(["new", "new"], inputs) == ["new"]
