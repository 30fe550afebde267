"""Similarity search from examples: a set of object ids (their centroid, or each) and an
external FITS cutout embedded with the run's own model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hyrax_mlops.errors import HyraxError
from hyrax_mlops.search import Searcher

DATA = Path(__file__).parent / "data"


def test_centroid_of_examples_leaves_them_out_and_each_gives_one_table(demo_store):
    result, cfg = demo_store
    searcher = Searcher(result["index"].run_id, cfg)
    examples = ["XDF00002", "XDF00005", "XDF00009"]
    (table,) = searcher.by_examples(examples, k=8)
    assert len(table) == 8 and not set(table["object_id"]) & set(examples)
    assert list(table["rank"]) == list(range(1, 9))
    assert np.all(np.diff(table["distance"].to_numpy()) >= -1e-6)
    centroid = searcher.index.get_vectors(examples).mean(axis=0)
    direct = searcher.by_vector(centroid, 11)[0]
    assert list(table["object_id"]) == [o for o in direct["object_id"] if o not in examples][:8]
    each = searcher.by_examples(examples, k=3, each=True)
    assert [t["object_id"].iloc[0] for t in each] == examples  # each finds itself first
    with pytest.raises(HyraxError, match="NOPE"):
        searcher.by_examples(["NOPE"], k=3)


def test_an_external_fits_cutout_finds_its_own_galaxy(demo_store):
    result, cfg = demo_store
    searcher = Searcher(result["index"].run_id, cfg)
    table = searcher.by_cutout(str(DATA / "xdf_fits/stamps/XDF00003.fits"), k=5)
    assert table["object_id"].iloc[0] == "XDF00003"  # the same pixels: itself, at ~0
    assert table["distance"].iloc[0] < 1e-5 < table["distance"].iloc[1]
    assert "flux" in table.columns  # with its catalog row
    with pytest.raises(HyraxError, match=r"takes \[3, 64, 64\]"):
        searcher.by_cutout(str(DATA / "sky/a2744_group_f105w.fits"), k=5)


def test_the_cli_searches_from_examples_and_from_a_fits_file(demo_store, capsys):
    from hyrax_mlops.cli import main

    result, _ = demo_store
    index = result["index"].run_id
    assert main(["search", "--run", index, "--ids", "XDF00002,XDF00005", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "XDF00002" not in out and "XDF00005" not in out and out.count("\n") == 4
    assert main(["search", "--run", index, "--ids", "XDF00002,XDF00005", "--each",
                 "-k", "2"]) == 0
    assert capsys.readouterr().out.count("object_id") == 2  # one table per example
    fits = str(DATA / "xdf_fits/stamps/XDF00003.fits")
    assert main(["search", "--run", index, "--fits", fits, "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[1] == "XDF00003"


def test_an_object_searched_by_id_comes_first_among_those_tied_with_it():
    """A catalogue's dense embeddings put other objects at distance 0 from the one asked
    about (10M objects of five magnitudes: three of them ranked above "00003"), or more than
    k of them (it is not returned at all): it is first, at 0, with its own catalog row."""
    import pandas as pd

    from hyrax_mlops.search import itself_first

    def table(ids, distances):
        return pd.DataFrame({"rank": range(1, len(ids) + 1), "object_id": ids,
                             "distance": distances, "mag_g": [20.0 + i for i in range(len(ids))]})

    own = table(["00003"], [0.0]).assign(mag_g=22.9)
    ranked_third = table(["36411448546178287", "36411448546617456", "00003", "7"],
                         [0.0, 0.0, 1e-8, 2e-7])
    got = itself_first(ranked_third, "00003", lambda: own)
    assert got["object_id"].tolist() == ["00003", "36411448546178287", "36411448546617456", "7"]
    assert got["rank"].tolist() == [1, 2, 3, 4] and got["distance"].iloc[0] == 0.0
    assert got["mag_g"].iloc[0] == 22.0  # its row from the table (20 + its place), not `own`
    assert got["distance"].is_monotonic_increasing

    left_out = table(["A", "B", "C"], [0.0, 0.0, 0.0])
    got = itself_first(left_out, "00003", lambda: own)
    assert got["object_id"].tolist() == ["00003", "A", "B"] and len(got) == 3
    assert got["mag_g"].iloc[0] == 22.9
