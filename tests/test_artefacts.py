"""The physics of the artefacts the discovery benchmark injects (benchmarks/artefacts.py), on
real XDF stamps cut the way the `xdf` source cuts them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from artefacts import KINDS, SINGLE_BAND_KINDS, band_stats, inject, plan  # noqa: E402

from conftest import real_xdf_stamps  # noqa: E402

CEILING = 255.0


@pytest.fixture(scope="module")
def stamps() -> np.ndarray:
    return real_xdf_stamps(12)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a != b


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_keeps_dtype_range_and_reports_what_changed(stamps, kind):
    for i, s in enumerate(stamps):
        new, info = inject(s, kind, np.random.default_rng(i), ceiling=CEILING)
        assert new.dtype == s.dtype and new.shape == s.shape
        assert new.min() >= 0 and new.max() <= CEILING
        assert info["kind"] == kind
        assert info["changed"] == int(_changed(new, s).sum()) > 0
        assert info["changed_bands"] == [int(b) for b in np.flatnonzero(
            _changed(new, s).any(axis=(1, 2)))]


def test_band_zeroed_empties_one_band_and_leaves_the_others(stamps):
    for i, s in enumerate(stamps):
        new, info = inject(s, "band_zeroed", np.random.default_rng(i), ceiling=CEILING)
        b = info["bands"][0]
        expected = 0.0 if info["fill"] == "zero" else info["floor"][b]
        assert np.all(new[b] == np.float32(expected))
        others = [o for o in range(3) if o != b]
        assert np.array_equal(new[others], s[others])


def test_band_half_cuts_one_band_along_a_straight_edge(stamps):
    for i, s in enumerate(stamps):
        new, info = inject(s, "band_half", np.random.default_rng(i), ceiling=CEILING)
        b, edge = info["bands"][0], info["edge"]
        assert 0.3 * 64 - 1 <= edge <= 0.7 * 64 + 1
        plane = new[b] if info["axis"] == "column" else new[b].T
        orig = s[b] if info["axis"] == "column" else s[b].T
        gone, kept = ((slice(0, edge), slice(edge, 64)) if info["side"] == "low"
                      else (slice(edge, 64), slice(0, edge)))
        fill = 0.0 if info["fill"] == "zero" else info["floor"][b]
        assert np.all(plane[:, gone] == np.float32(fill))
        assert np.array_equal(plane[:, kept], orig[:, kept])
        assert info["changed_bands"] == [b]


def test_trail_lies_along_a_line_of_a_few_pixels_width(stamps):
    for i, s in enumerate(stamps):
        new, info = inject(s, "trail", np.random.default_rng(100 + i), ceiling=CEILING)
        assert 1.0 <= info["fwhm"] <= 3.0
        assert info["sigma_multiple"] >= 5.0
        b = info["bands"][0]
        rows, cols = np.nonzero(new[b] > s[b] + 0.5)
        assert len(rows) >= 40  # it crosses the stamp
        # a line fit through the brightened pixels: small perpendicular scatter
        pts = np.column_stack([cols, rows]).astype(float)
        pts -= pts.mean(axis=0)
        _, sv, vt = np.linalg.svd(pts, full_matrices=False)
        across = np.abs(pts @ vt[1])
        assert np.percentile(across, 90) <= 3 * info["fwhm"]
        direction = np.degrees(np.arctan2(vt[0][1], vt[0][0])) % 180
        diff = abs(direction - info["angle_deg"] % 180)
        assert min(diff, 180 - diff) < 5
        assert set(info["changed_bands"]) <= set(info["bands"])


def test_trail_brightness_scales_with_the_stamps_noise(stamps):
    s = stamps[-1]  # a faint stamp: nothing saturates
    new, info = inject(s, "trail", np.random.default_rng(3), ceiling=None, all_bands=False)
    b = info["bands"][0]
    noisier = s.astype(np.float64) * 1.0
    rng = np.random.default_rng(0)
    noisier[b] += rng.normal(0, 3 * band_stats(s).sigma[b], s[b].shape)
    new2, info2 = inject(noisier.astype(np.float32), "trail", np.random.default_rng(3),
                         ceiling=None, all_bands=False)
    assert info2["bands"] == [b] and info2["sigma_multiple"] == info["sigma_multiple"]
    peak1 = (new[b] - s[b]).max()
    peak2 = (new2[b] - noisier[b].astype(np.float32)).max()
    ratio = info2["noise"][b] / info["noise"][b]
    assert ratio > 2
    assert peak2 / peak1 == pytest.approx(ratio, rel=0.05)


def test_cosmic_ray_is_a_few_sharp_pixels_in_one_band_well_above_noise(stamps):
    for i, s in enumerate(stamps):
        new, info = inject(s, "cosmic_ray", np.random.default_rng(i), ceiling=CEILING)
        diff = new.astype(np.float64) - s
        assert len(info["changed_bands"]) == 1 and info["changed_bands"] == info["bands"]
        b = info["bands"][0]
        hit = np.argwhere(diff[b] != 0)
        assert 1 <= len(hit) <= 4
        assert np.all(diff[b][diff[b] != 0] > 0)
        # sharp: the hit stands far above the noise, or reaches saturation
        assert np.all((diff[b][diff[b] != 0] >= 15 * info["noise"][b])
                      | (new[b][diff[b] != 0] == CEILING))
        assert np.ptp(hit[:, 0]) <= 3 and np.ptp(hit[:, 1]) <= 3  # adjacent pixels


def test_spike_streaks_are_radial_around_a_bright_centre(stamps):
    for i, s in enumerate(stamps[:6]):
        new, info = inject(s, "spike", np.random.default_rng(i), ceiling=CEILING)
        r0, c0 = info["centre"]
        assert info["n_spikes"] in (4, 6)
        lum = (new.astype(np.float64) - s).sum(axis=0)
        strong = np.argwhere(lum > 0.05 * lum.max())
        dy, dx = strong[:, 0] - r0, strong[:, 1] - c0
        r = np.hypot(dy, dx)
        far = r > 4
        if info["added_star"]:
            far &= r > 8  # past the added star's core
        ang = np.degrees(np.arctan2(dy[far], dx[far])) % 360
        step = 360 / info["n_spikes"]
        off = (ang - info["angle_deg"]) % step
        off = np.minimum(off, step - off)
        # brightened pixels away from the core lie within a few degrees of a spike
        assert len(off) > 10
        assert np.median(off) < 8
        assert r.max() <= info["length"] + 2


def line_mask(shape: tuple[int, ...], info: dict) -> np.ndarray:
    """True on the pixels of the injected column (or row)."""
    b, pos = info["bands"][0], info["index"]
    lo, hi = info["span"]
    mask = np.zeros(shape, bool)
    if info["axis"] == "column":
        mask[b, lo:hi, pos] = True
    else:
        mask[b, pos, lo:hi] = True
    return mask


def each_line(stamps, kind: str):
    """For each stamp, `kind` injected: (stamp, new, info, band, (lo, hi), its line mask)."""
    for i, s in enumerate(stamps):
        new, info = inject(s, kind, np.random.default_rng(i), ceiling=CEILING)
        yield s, new, info, info["bands"][0], info["span"], line_mask(s.shape, info)


def test_hot_column_is_high_along_one_column_or_row_of_one_band(stamps):
    for s, new, info, b, (lo, hi), mask in each_line(stamps, "hot_column"):
        line = new[mask]
        floor, sigma = info["floor"][b], info["noise"][b]
        level = floor + info["sigma_multiple"] * sigma
        assert np.median(line) >= min(level, CEILING) - 3 * sigma
        assert info["sigma_multiple"] >= 10
        assert np.array_equal(new[~mask], s[~mask])
        if not info["partial"]:
            assert hi - lo == 64


def test_dead_column_is_zero_or_floor_along_a_column(stamps):
    for s, new, info, b, (lo, hi), mask in each_line(stamps, "dead_column"):
        line = new[mask]
        fill = 0.0 if info["fill"] == "zero" else info["floor"][b]
        assert np.all(line == np.float32(fill))
        assert hi - lo >= 64 // 3
        assert np.array_equal(new[~mask], s[~mask])


def test_single_band_stamps_take_every_kind_but_the_band_ones(stamps):
    one = stamps[3][:1]
    for kind in SINGLE_BAND_KINDS:
        new, info = inject(one, kind, np.random.default_rng(0))
        assert new.shape == one.shape and info["changed"] > 0
    for kind in ("band_zeroed", "band_half"):
        with pytest.raises(ValueError, match="two or more bands"):
            inject(one, kind, np.random.default_rng(0))


def test_plan_spreads_five_percent_evenly_over_kinds_and_is_seeded():
    a = plan(1408, KINDS, np.random.default_rng(1))
    assert a == plan(1408, KINDS, np.random.default_rng(1))
    assert len(a) == 70 and len({i for i, _ in a}) == 70
    counts = {k: sum(1 for _, kk in a if kk == k) for k in KINDS}
    assert max(counts.values()) - min(counts.values()) <= 1
    small = plan(23, SINGLE_BAND_KINDS, np.random.default_rng(1))
    assert sorted(k for _, k in small) == sorted(SINGLE_BAND_KINDS)


# --- the untuned HST set of the discovery benchmark: source stamps plus a grid -------------

def _bench():
    import bench_discovery

    return bench_discovery


def test_grid_origins_tile_whole_stamps_at_the_stride():
    grid = _bench().grid_origins((100, 150), 32, 16)
    ys, xs = sorted({y for y, _ in grid}), sorted({x for _, x in grid})
    assert ys == [0, 16, 32, 48, 64] and xs == list(range(0, 119, 16))
    assert len(grid) == len(ys) * len(xs)
    assert all(y + 32 <= 100 and x + 32 <= 150 for y, x in grid)


def test_dedupe_keeps_the_first_of_near_coincident_positions():
    xy = np.array([[10.0, 10.0], [12.0, 11.0], [30.0, 10.0], [10.0, 14.5], [32.0, 12.0]])
    assert _bench().dedupe(xy, 4.0).tolist() == [0, 2, 3]


@pytest.fixture(scope="module")
def hst():
    return _bench().hst_stamps()


def test_hst_set_is_source_stamps_plus_a_deduplicated_grid(hst):
    b = _bench()
    stamps, cat = hst
    assert stamps.shape[1:] == (1, b.HST_STAMP, b.HST_STAMP) and len(stamps) == len(cat)
    assert 1500 <= len(stamps) <= 1700
    assert np.isfinite(stamps).all()
    assert cat["object_id"].is_unique
    n_src = int(cat["is_source"].sum())
    assert n_src >= 20  # every SEP source that fits whole has its own stamp
    # no two stamps (even from overlapping images) are centred within the dedup radius
    from astropy.coordinates import SkyCoord

    sky = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    _, sep2d, _ = sky.match_to_catalog_sky(sky, nthneighbor=2)
    assert sep2d.arcsec.min() > b.HST_DEDUP * 0.06 * 0.99
    # a grid stamp is a plain cut of its image at a multiple of the stride
    from astropy.io import fits

    row = cat[cat["is_source"] == 0].iloc[-1]
    data = fits.getdata(b.SKY / row["image"]).astype(np.float32)
    half = b.HST_STAMP // 2
    y0, x0 = int(row["y"] + 0.5) - half, int(row["x"] + 0.5) - half
    assert y0 % b.HST_STRIDE == 0 and x0 % b.HST_STRIDE == 0
    assert np.array_equal(stamps[len(cat) - 1, 0], data[y0:y0 + b.HST_STAMP, x0:x0 + b.HST_STAMP])


def test_hst_set_takes_more_than_ten_of_each_single_band_kind(hst):
    """5 % of the HST set, evenly over the kinds, and more of each than the look-alike
    neighbours counted (K): with fewer, an artefact's neighbours could not all share its kind."""
    b = _bench()
    stamps, _ = hst
    chosen = plan(len(stamps), SINGLE_BAND_KINDS, np.random.default_rng(0),
                  fraction=b.FRACTION, minimum_per_kind=b.HST_PER_KIND)
    counts = {k: sum(1 for _, kk in chosen if kk == k) for k in SINGLE_BAND_KINDS}
    assert min(counts.values()) >= b.K + 1 and max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == round(b.FRACTION * len(stamps))
    for i, kind in chosen:  # empty-sky grid stamps take every kind too (no ceiling: e-/s)
        new, info = inject(stamps[i], kind, np.random.default_rng(i))
        assert new.shape == stamps[i].shape and np.isfinite(new).all()
        assert info["changed"] > 0
