"""Instrumental artefacts injected into real stamps, for the discovery benchmark.

Every kind is put in at an amplitude set by the stamp's own statistics, band by band: its
background floor (sigma-clipped median), its noise (robust sigma: 1.4826 x the MAD of the
clipped background) and its dynamic range (the 99.9th percentile; `ceiling`, when the data
saturate, e.g. 255 for 8-bit display values). Light that is added (trails, spikes, cosmic
rays, hot columns) is clipped at `ceiling`, as a saturated detector or an 8-bit composite
would; pixels that lose their signal (zeroed bands, dead columns, uncovered halves) take
`fill`: 0 (no data) or the band's background floor.

    stamp2, info = inject(stamp, "trail", np.random.default_rng(0), ceiling=255.0)

`info` says what was done: the kind, the bands touched, where, the amplitude in units of the
band's noise, and `changed` (the number of pixel values that differ from the input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("band_zeroed", "band_half", "trail", "spike", "cosmic_ray", "hot_column",
         "dead_column")
BAND_KINDS = ("band_zeroed", "band_half")  # need more than one band to mean anything
SINGLE_BAND_KINDS = tuple(k for k in KINDS if k not in BAND_KINDS)


@dataclass
class BandStats:
    """Per band: background floor, robust noise sigma, 99.9th percentile and maximum."""

    floor: np.ndarray
    sigma: np.ndarray
    top: np.ndarray
    peak: np.ndarray


def band_stats(stamp: np.ndarray, clip: float = 3.0, rounds: int = 5) -> BandStats:
    """Sigma-clipped background statistics of each band of a (bands, h, w) stamp. The noise
    of 8-bit data is at least 0.5 (one display level)."""
    floors, sigmas = [], []
    for band in np.asarray(stamp, np.float64):
        pix = band.ravel()
        med = float(np.median(pix))
        sig = 1.4826 * float(np.median(np.abs(pix - med)))
        for _ in range(rounds):
            keep = pix[np.abs(pix - med) <= clip * max(sig, 1e-12)]
            if len(keep) < 20:
                break
            med = float(np.median(keep))
            new = 1.4826 * float(np.median(np.abs(keep - med)))
            if new == sig:
                break
            sig = new
        if sig <= 0:  # quantised or flat background: the spread of the faint half
            faint = pix[pix <= np.percentile(pix, 50)]
            sig = float(np.std(faint)) or float(np.std(pix)) or 1.0
        floors.append(med)
        sigmas.append(sig)
    flat = np.asarray(stamp, np.float64).reshape(len(stamp), -1)
    return BandStats(np.array(floors), np.array(sigmas), np.percentile(flat, 99.9, axis=1),
                     flat.max(axis=1))


def _ceiling_for(stats: BandStats, ceiling: float | None) -> np.ndarray:
    """The brightest value an injected artefact may reach, per band: the data's saturation
    level when it has one, else a little above the stamp's own maximum."""
    if ceiling is not None:
        return np.full(len(stats.floor), float(ceiling))
    span = np.maximum(stats.peak - stats.floor, 50 * stats.sigma)
    return stats.floor + 1.2 * span


def _multiple(rng: np.random.Generator, low: float, high: float) -> float:
    """A log-uniform multiple of the noise between `low` and `high` (high at least 1.5 x low)."""
    high = max(high, 1.5 * low)
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _fill_value(stats: BandStats, band: int, fill: str) -> float:
    return 0.0 if fill == "zero" else float(stats.floor[band])


def _finish(original: np.ndarray, new: np.ndarray, info: dict[str, Any]
            ) -> tuple[np.ndarray, dict[str, Any]]:
    new = new.astype(original.dtype, copy=False)
    info["changed"] = int(np.count_nonzero(new != original))
    info["changed_bands"] = [int(b) for b in np.flatnonzero((new != original).any(axis=(1, 2)))]
    return new, info


def _add_light(out: np.ndarray, band: int, light: np.ndarray, top: float) -> None:
    """Add `light` to one band, saturating at `top` (never lowering a pixel already above)."""
    out[band] = np.where(out[band] >= top, out[band], np.minimum(out[band] + light, top))


# --- kinds ---------------------------------------------------------------------------------

def band_zeroed(stamp, rng, stats, ceiling, fill=None):
    """One band lost: every pixel of it set to 0 (no data) or its background floor."""
    bands = stamp.shape[0]
    if bands < 2:
        raise ValueError("band_zeroed needs a stamp of two or more bands")
    b = int(rng.integers(bands))
    fill = fill or str(rng.choice(["zero", "floor"]))
    out = stamp.astype(np.float64)
    out[b] = _fill_value(stats, b, fill)
    return out, {"bands": [b], "fill": fill}


def band_half(stamp, rng, stats, ceiling, fill=None):
    """One band covered on part of the stamp only (a chip edge or a missing exposure): beyond
    a straight edge (vertical or horizontal, 30-70 % across) the band holds no data."""
    bands, h, w = stamp.shape
    if bands < 2:
        raise ValueError("band_half needs a stamp of two or more bands")
    b = int(rng.integers(bands))
    fill = fill or str(rng.choice(["zero", "floor"]))
    axis = str(rng.choice(["column", "row"]))
    size = w if axis == "column" else h
    edge = int(round(rng.uniform(0.3, 0.7) * size))
    side = str(rng.choice(["low", "high"]))
    sl = slice(0, edge) if side == "low" else slice(edge, size)
    out = stamp.astype(np.float64)
    region = (b, slice(None), sl) if axis == "column" else (b, sl, slice(None))
    out[region] = _fill_value(stats, b, fill)
    return out, {"bands": [b], "fill": fill, "axis": axis, "edge": edge, "side": side}


def trail(stamp, rng, stats, ceiling, all_bands=None):
    """A satellite trail: a straight line across the stamp at a random angle and offset from
    the centre, a Gaussian profile across it (FWHM 1-3 px), brightness a log-uniform multiple
    of the noise from 5 sigma to the saturation level, in every band or in one."""
    bands, h, w = stamp.shape
    top = _ceiling_for(stats, ceiling)
    angle = float(rng.uniform(0, np.pi))
    offset = float(rng.uniform(-0.35, 0.35) * min(h, w))
    fwhm = float(rng.uniform(1.0, 3.0))
    width = fwhm / 2.3548
    multiple = _multiple(rng, 5.0, float(np.min((top - stats.floor) / stats.sigma)))
    every = bool(rng.random() < 0.5) if all_bands is None else all_bands
    chosen = list(range(bands)) if every else [int(rng.integers(bands))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # signed distance to the line through the centre+offset along the direction `angle`
    dist = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle) - offset
    profile = np.exp(-0.5 * (dist / width) ** 2)
    profile[profile < 1e-3] = 0.0
    out = stamp.astype(np.float64)
    for b in chosen:
        _add_light(out, b, multiple * stats.sigma[b] * profile, top[b])
    return out, {"bands": chosen, "angle_deg": float(np.degrees(angle)), "offset": offset,
                 "fwhm": fwhm, "sigma_multiple": multiple}


def _brightest_compact(stamp: np.ndarray, stats: BandStats) -> tuple[int, int, float]:
    """(row, col, significance) of the brightest compact peak: the maximum of the noise-
    normalised stamp summed over bands, after a 3x3 box smoothing (one hot pixel is no star)."""
    norm = ((stamp - stats.floor[:, None, None]) / stats.sigma[:, None, None]).sum(axis=0)
    pad = np.pad(norm, 1, mode="edge")
    smooth = sum(pad[i:i + norm.shape[0], j:j + norm.shape[1]]
                 for i in range(3) for j in range(3)) / 9.0
    r, c = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return int(r), int(c), float(smooth[r, c] / np.sqrt(len(stamp)))


def spike(stamp, rng, stats, ceiling, n_spikes=None):
    """Diffraction spikes: 4 (or 6) thin radial streaks from the brightest compact source of
    the stamp, their brightness falling off as 1/r from a fraction of the source's peak. When
    the stamp has no bright compact source (below 30 sigma), a star is added first: a Gaussian
    core (FWHM 1.5-3 px) at a random place, 50 sigma to saturation."""
    bands, h, w = stamp.shape
    top = _ceiling_for(stats, ceiling)
    out = stamp.astype(np.float64)
    r0, c0, significance = _brightest_compact(out, stats)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    added_star = significance < 30
    if added_star:
        r0 = int(rng.integers(h // 4, 3 * h // 4))
        c0 = int(rng.integers(w // 4, 3 * w // 4))
        core = float(rng.uniform(1.5, 3.0)) / 2.3548
        amp = _multiple(rng, 50.0, float(np.min((top - stats.floor) / stats.sigma)))
        star = np.exp(-0.5 * ((yy - r0) ** 2 + (xx - c0) ** 2) / core ** 2)
        for b in range(bands):
            _add_light(out, b, amp * stats.sigma[b] * star, top[b])
    peak = np.maximum(out[:, r0, c0] - stats.floor, 10 * stats.sigma)  # per band: the colour
    n = int(n_spikes or rng.choice([4, 6]))
    theta0 = float(rng.uniform(0, 2 * np.pi / n))
    length = float(rng.uniform(0.3, 0.5) * min(h, w))
    strength = float(rng.uniform(0.3, 1.0))
    width = float(rng.uniform(0.5, 0.8))
    dy, dx = yy - r0, xx - c0
    light = np.zeros((h, w))
    for k in range(n):
        th = theta0 + 2 * np.pi * k / n
        along = dx * np.cos(th) + dy * np.sin(th)
        across = -dx * np.sin(th) + dy * np.cos(th)
        on = (along > 1.0) & (along < length)
        fall = np.where(on, 2.0 / np.maximum(along, 1.0), 0.0) * np.clip(
            (length - along) / 3.0, 0, 1)  # 1/r, fading out over the last 3 px
        light = np.maximum(light, fall * np.exp(-0.5 * (across / width) ** 2))
    light[light < 1e-3] = 0.0
    for b in range(bands):
        _add_light(out, b, strength * peak[b] * light, top[b])
    return out, {"bands": list(range(bands)), "centre": [r0, c0], "n_spikes": n,
                 "angle_deg": float(np.degrees(theta0)), "length": length,
                 "strength": strength, "added_star": added_star,
                 "source_sigma": significance}


def cosmic_ray(stamp, rng, stats, ceiling, n_pixels=None):
    """A cosmic-ray hit: 1-4 adjacent pixels of ONE band, no PSF, each 20 sigma to the
    saturation level above what is there. It lands where the band is not saturated already
    (a hit on a saturated pixel leaves no trace)."""
    bands, h, w = stamp.shape
    top = _ceiling_for(stats, ceiling)
    b = int(rng.integers(bands))
    n = int(n_pixels or rng.integers(1, 5))
    room = (top[b] - stamp[b]) / stats.sigma[b]
    free = np.argwhere(room > 25)
    if len(free) == 0:
        free = np.argwhere(room > 0)
    if len(free) == 0:
        raise ValueError("every pixel of the band is saturated: nowhere for a cosmic ray to show")
    r, c = (int(v) for v in free[rng.integers(len(free))])
    pixels = [(r, c)]
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    for _ in range(50 * n):
        if len(pixels) >= n:
            break
        pr, pc = pixels[int(rng.integers(len(pixels)))]
        sr, sc = steps[int(rng.integers(len(steps)))]
        q = (pr + sr, pc + sc)
        if 0 <= q[0] < h and 0 <= q[1] < w and q not in pixels and room[q] > 0:
            pixels.append(q)
    out = stamp.astype(np.float64)
    hi = float(room[r, c])
    amps = []
    for q in pixels:
        m = _multiple(rng, 20.0, hi)
        amps.append(m)
        out[b][q] = min(out[b][q] + m * stats.sigma[b], top[b])
    return out, {"bands": [b], "pixels": [list(q) for q in pixels], "sigma_multiple": amps}


def _line(stamp, rng, partial=None):
    """A column or row of one band, full length or from one edge part of the way."""
    bands, h, w = stamp.shape
    b = int(rng.integers(bands))
    axis = str(rng.choice(["column", "row"]))
    size, length = (w, h) if axis == "column" else (h, w)
    pos = int(rng.integers(2, size - 2))
    part = bool(rng.random() < 0.5) if partial is None else partial
    if part:
        n = int(rng.integers(length // 3, length))
        span = slice(0, n) if rng.random() < 0.5 else slice(length - n, length)
    else:
        span = slice(0, length)
    region = (b, span, pos) if axis == "column" else (b, pos, span)
    return b, region, {"bands": [b], "axis": axis, "index": pos,
                       "span": [span.start, span.stop], "partial": part}


def hot_column(stamp, rng, stats, ceiling, partial=None):
    """A hot column (or row) in one band: its pixels set to a high level, 10 sigma to the
    saturation level above the floor (plus the band's noise), full length or partial."""
    top = _ceiling_for(stats, ceiling)
    b, region, info = _line(stamp, rng, partial)
    multiple = _multiple(rng, 10.0, float((top[b] - stats.floor[b]) / stats.sigma[b]))
    out = stamp.astype(np.float64)
    level = stats.floor[b] + multiple * stats.sigma[b]
    noise = rng.normal(0, stats.sigma[b], out[region].shape)
    out[region] = np.clip(np.maximum(out[region], level + noise), None, top[b])
    info["sigma_multiple"] = multiple
    return out, info


def dead_column(stamp, rng, stats, ceiling, partial=None, fill=None):
    """A dead column (or row) in one band: 0 (no data) or the background floor, full length
    or partial."""
    b, region, info = _line(stamp, rng, partial)
    fill = fill or str(rng.choice(["zero", "floor"]))
    out = stamp.astype(np.float64)
    out[region] = _fill_value(stats, b, fill)
    info["fill"] = fill
    return out, info


INJECTORS = {"band_zeroed": band_zeroed, "band_half": band_half, "trail": trail,
             "spike": spike, "cosmic_ray": cosmic_ray, "hot_column": hot_column,
             "dead_column": dead_column}


def inject(stamp: np.ndarray, kind: str, rng: np.random.Generator, *,
           ceiling: float | None = None, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """`stamp` (bands, h, w) with one artefact of `kind` in it, and what was injected.
    `ceiling`: the data's saturation level (255 for 8-bit display values), None for
    calibrated flux without one. Options are the kind's own (e.g. `all_bands` for a trail)."""
    if kind not in INJECTORS:
        raise ValueError(f"unknown artefact kind '{kind}'; choose one of {', '.join(KINDS)}")
    stamp = np.asarray(stamp)
    if stamp.ndim != 3:
        raise ValueError(f"expected a (bands, h, w) stamp, got shape {stamp.shape}")
    stats = band_stats(stamp)
    new, info = INJECTORS[kind](stamp, rng, stats, ceiling, **options)
    if ceiling is not None:
        new = np.clip(new, None, float(ceiling))
    info = {"kind": kind, **info, "noise": [float(s) for s in stats.sigma],
            "floor": [float(f) for f in stats.floor]}
    return _finish(stamp, new, info)


def plan(n_objects: int, kinds: Sequence[str], rng: np.random.Generator, *,
         fraction: float = 0.05, minimum_per_kind: int = 1) -> list[tuple[int, str]]:
    """Which objects get which artefact: `fraction` of them (at least `minimum_per_kind` of
    each kind), spread evenly over `kinds`, chosen at random without repeats."""
    total = max(int(round(fraction * n_objects)), minimum_per_kind * len(kinds))
    total = min(total, n_objects)
    per = [total // len(kinds) + (1 if i < total % len(kinds) else 0) for i in range(len(kinds))]
    order = rng.permutation(len(kinds))  # which kinds get the remainder
    per = [per[int(np.flatnonzero(order == i)[0])] for i in range(len(kinds))]
    chosen = rng.choice(n_objects, size=total, replace=False)
    labels = [k for k, n in zip(kinds, per, strict=True) for _ in range(n)]
    return [(int(i), k) for i, k in zip(chosen, labels, strict=True)]
