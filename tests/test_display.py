"""The display stretches (astropy.visualization) on real XDF stamps: what maps to black and
to white, and Lupton's composite keeping each pixel's colour."""

from __future__ import annotations

import numpy as np
import pytest

from hyrax_mlops.data.display import STRETCHES, lupton, stretch

from conftest import real_xdf_stamps


@pytest.fixture(scope="module")
def stamps() -> np.ndarray:
    return real_xdf_stamps(6)


def test_asinh_maps_each_band_from_its_median_to_its_bright_end(stamps):
    cube = stamps[2]
    rgb = stretch(cube)[::-1]  # back to FITS row order
    for band in range(3):
        med = np.median(cube[band])
        top = med + np.percentile(cube[band] - med, 99.5)
        assert rgb[..., band][cube[band] <= med].max() == 0
        assert rgb[..., band][cube[band] >= top].min() == pytest.approx(1.0)
        inside = (cube[band] > med) & (cube[band] < top)
        assert rgb[..., band][inside].min() > 0 and rgb[..., band][inside].max() < 1


def test_lupton_keeps_each_pixel_s_colour(stamps):
    checked = 0
    for cube in stamps:
        rgb = lupton(cube)[::-1]
        bands = np.clip(cube - np.median(cube, axis=(1, 2), keepdims=True), 0, None)
        assert np.percentile(rgb.max(axis=2), 99.5) == pytest.approx(1.0, abs=0.01)
        lit = (bands.min(axis=0) > 2) & (rgb.max(axis=2) < 0.99)  # coloured, not saturated
        checked += lit.sum()
        for a, b in ((0, 1), (2, 1)):
            np.testing.assert_allclose(rgb[..., a][lit] / rgb[..., b][lit],
                                       bands[a][lit] / bands[b][lit], rtol=1e-6)
    assert checked > 100
    # per-band asinh does not keep it: each band is brightened by its own scale
    rgb, bands = stretch(stamps[0])[::-1], stamps[0] - np.median(stamps[0], axis=(1, 2),
                                                                  keepdims=True)
    lit = (bands.min(axis=0) > 2) & (rgb.max(axis=2) < 0.99)
    assert not np.allclose(rgb[..., 0][lit] / rgb[..., 1][lit], bands[0][lit] / bands[1][lit],
                           rtol=1e-3)


def test_every_stretch_gives_an_rgb_image_for_any_band_count(stamps):
    for name, show in STRETCHES.items():
        for cube in (stamps[0], stamps[0][:1], np.concatenate([stamps[0], stamps[1][:1]])):
            rgb = show(cube)
            assert rgb.shape == (64, 64, 3) and rgb.min() >= 0 and rgb.max() <= 1, name
