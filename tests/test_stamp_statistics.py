"""Stamp statistics (where and how a stamp departs from the rest) on real XDF stamps: each
kind of departure is named by the statistic made for it, and comes out most significant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyrax_mlops.analysis.stamp_statistics import robust_z, significance, stamp_statistics

from conftest import real_xdf_stamps


@pytest.fixture(scope="module")
def stamps() -> np.ndarray:
    return real_xdf_stamps(48)


def normalised(cubes: np.ndarray) -> torch.Tensor:
    from hyrax_mlops.data.normalize import fit_normalizer

    return torch.from_numpy(np.ascontiguousarray(fit_normalizer("asinh", cubes).apply(cubes)))


def ranked(cubes: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Stamps from the most significant departure down, and the statistic behind each."""
    score, which = significance(stamp_statistics(normalised(cubes), stretch="asinh"))
    return [int(i) for i in np.argsort(-score)], which


def add_light(stamp: np.ndarray, light: np.ndarray) -> None:
    """Add `light` (h, w) to every band of an 8-bit stamp, saturating at 255."""
    stamp[:] = np.minimum(stamp + light[None], 255.0)


def test_a_hit_in_one_band_is_the_sharpest_pixel_of_that_band(stamps):
    before, _ = ranked(stamps)
    assert before.index(17) > 10  # an ordinary stamp ...
    cubes = stamps.copy()
    cubes[17, 1, 10, 40] = 255.0  # ... hit: two pixels of one band at saturation, on sky
    cubes[17, 1, 11, 40] = 255.0
    order, which = ranked(cubes)
    # among the three most significant (with the brightest stamp, a saturated star)
    assert order.index(17) < 3 and which[17].startswith("sharp_pixel"), which[17]


def test_a_dead_column_in_one_band_is_a_flat_run(stamps):
    before, _ = ranked(stamps)
    assert before.index(30) > 10
    cubes = stamps.copy()
    cubes[30, 2, :, 21] = 0.0  # no data along a whole column of one band
    order, which = ranked(cubes)
    assert order.index(30) < 3 and which[30].startswith("flat_run"), which[30]


def test_a_faint_hit_is_found_on_the_linear_scale_the_stretch_hid(stamps):
    cubes = stamps.copy()
    sky = 1.4826 * np.median(np.abs(cubes[40, 0] - np.median(cubes[40, 0])))
    cubes[40, 0, 50, 12] += 17 * sky  # one pixel of one band, 17 sigma above the sky
    x = normalised(cubes)
    stretched = stamp_statistics(x)["sharp_pixel"]
    linear = stamp_statistics(x, stretch="asinh")["sharp_pixel"]
    # the asinh stretch squeezes the hit to a few units; undone, it is the sharpest of all,
    # sharper than the cores of the stars (their photon noise allowed for)
    assert int(np.argmax(linear)) == 40
    assert robust_z(linear)[40] > 3 * robust_z(stretched)[40] > 0


def test_a_trail_across_every_band_is_a_straight_line(stamps):
    before, _ = ranked(stamps)
    assert before.index(20) > 10
    cubes = stamps.copy()
    yy, xx = np.mgrid[0:64, 0:64]
    across = (yy - 40) * np.cos(0.35) - (xx - 32) * np.sin(0.35)  # 20 degrees, off centre
    add_light(cubes[20], 40.0 * np.exp(-0.5 * (across / 0.9) ** 2))
    order, which = ranked(cubes)
    assert order.index(20) < 3 and which[20] == "straight_line", which[20]


def test_diffraction_spikes_from_a_star_are_radial_streaks(stamps):
    before, _ = ranked(stamps)
    assert before.index(25) > 10
    cubes = stamps.copy()
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    dy, dx = yy - 24, xx - 40
    r = np.hypot(dy, dx)
    light = 200.0 * np.exp(-0.5 * (r / 1.2) ** 2)  # a star ...
    for angle in (0.3, 0.3 + np.pi / 2, 0.3 + np.pi, 0.3 + 3 * np.pi / 2):  # ... and 4 spikes
        along = dx * np.cos(angle) + dy * np.sin(angle)
        off = -dx * np.sin(angle) + dy * np.cos(angle)
        light += np.where((along > 1) & (along < 24), 120.0 / np.maximum(along, 1), 0) * np.exp(
            -0.5 * (off / 0.6) ** 2)
    add_light(cubes[25], light)
    order, which = ranked(cubes)
    assert order.index(25) < 3 and which[25] == "radial_streaks", which[25]


def test_a_line_left_in_the_residual_is_found_at_any_angle():
    rng = np.random.default_rng(0)
    cubes = rng.normal(20.0, 2.0, (40, 3, 64, 64)).astype(np.float32)
    residuals = rng.normal(0.0, 0.1, cubes.shape).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    trail = np.abs((yy - 32) * np.cos(0.6) - (xx - 32) * np.sin(0.6)) < 0.8  # 35 degrees
    residuals[5][:, trail] += 0.25  # faint per pixel, strong along the line
    stats = stamp_statistics(torch.from_numpy(cubes), torch.from_numpy(residuals))
    assert int(np.argmax(stats["residual_line"])) == 5
    assert int(np.argmax(stats["residual_energy"])) == 5
    score, which = significance(stats)
    assert int(np.argmax(score)) == 5 and which[5] == "residual_line"


def test_single_band_data_has_no_band_contrasts_and_the_same_kinds():
    cubes = np.random.default_rng(1).normal(5.0, 1.0, (20, 1, 32, 32)).astype(np.float32)
    stats = stamp_statistics(torch.from_numpy(cubes))
    assert sorted(stats) == ["fine_segment", "flat_run", "radial_streaks", "sharp_pixel",
                             "straight_line"]
    assert all(v.shape == (20,) and np.isfinite(v).all() for v in stats.values())


def test_robust_z_is_in_units_of_the_upper_tail_and_falls_back_to_the_spread():
    ordinary = np.random.default_rng(2).normal(0.0, 1.0, 4000)
    z = robust_z(np.append(ordinary, 8.0))
    assert z[-1] == pytest.approx(8.0, rel=0.1)  # Gaussian: the usual sigma
    heavy = robust_z(np.append(np.exp(ordinary), np.exp(8.0)))  # a long tail counts less
    assert heavy[-1] < np.exp(8.0) / (1.4826 * np.median(np.abs(np.exp(ordinary) - 1)))
    quantised = np.array([0.0] * 99 + [1.0])  # no upper tail: the standard deviation instead
    assert robust_z(quantised)[-1] == pytest.approx(1.0 / quantised.std())
    assert not robust_z(np.full(5, 3.0)).any()


def test_the_anomaly_signature_is_zero_for_the_ordinary_and_names_what_departs(stamps):
    """The index's joined part (analysis.signature) on the statistics of real stamps: ordinary
    stamps get zeros, a stamp with a hit gets its weight in the hit's statistics, and a later
    query (one stamp, one statistic unmeasured) is scaled as the population was."""
    import pandas as pd

    from hyrax_mlops.analysis.signature import THRESHOLD, WEIGHT, Signature

    cubes = stamps.copy()
    cubes[5, 1, 30, 30] = cubes[5].max() * 4  # a one-pixel hit in one band
    table = pd.DataFrame(stamp_statistics(normalised(cubes), stretch="asinh"))
    table["object_id"], table["reconstruction_error"] = [f"X{i:03d}" for i in range(48)], 1.0
    # embeddings along one line, as a briefly trained model gives: magnitudes are kept
    embeddings = np.outer(np.linspace(-3, 3, 48), [1.0, 0.5, 0.0]) + [10.0, 0.0, 1.0]
    signature = Signature.fit(table, embeddings)
    assert "object_id" not in signature.names and "reconstruction_error" not in signature.names
    values = signature.values(table)
    assert values.shape == (48, len(signature.names)) and (values >= 0).all()
    assert np.median((values > 0).sum(axis=1)) == 0  # most stamps depart in nothing
    hit = dict(zip(signature.names, values[5], strict=True))
    assert hit["sharp_pixel"] == max(hit.values()) > WEIGHT * np.log1p(3)  # z > THRESHOLD + 3
    again = Signature.from_dict(signature.to_dict())
    assert again == signature and signature.to_dict()["threshold"] == THRESHOLD
    one = {k: v[5:6] for k, v in table.items() if k != "straight_line"}  # one unmeasured
    assert np.allclose(again.values(one), np.where(
        np.array(signature.names) == "straight_line", 0, values[5]))
    vectors = signature.join(embeddings, table)
    placed = vectors[:, :3]
    assert np.allclose(placed.mean(axis=0), 0, atol=1e-6)  # centred on the population
    assert np.sqrt((placed ** 2).sum(axis=1).mean()) == pytest.approx(1.0)  # RMS distance 1
    assert np.allclose(placed[0], -placed[-1])  # the line's ends stay apart, not folded
    assert np.array_equal(vectors[:, 3:], values)
    plain = again.join(embeddings[7], None)  # a plain embedding departs in nothing
    assert np.allclose(plain, np.r_[placed[7], np.zeros(len(signature.names))])
