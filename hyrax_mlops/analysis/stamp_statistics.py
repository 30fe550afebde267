"""Where and how a stamp departs from what the data usually look like: a few statistics of
each stamp's pixels and, for models that reconstruct their input, of its residual.

Each statistic is measured in noise units of the stamp itself (the robust spread of its fine
structure or of its residual), per band; the band with the largest value gives `<name>`, and
its margin over the next band `<name>_one_band` (something in one band only: a cosmic
ray, a hot column, a missing band). Statistics that look for something every band shares
(a trail, diffraction spikes) sum the bands' noise-normalised pixels instead, and have no
one-band margin. The statistics:

- `residual_energy`: log mean squared residual (the reconstruction error, per band);
- `residual_line`: the strongest straight line through the residual, at any of 12 angles
  (satellite trails, bad columns, a band edge);
- `sharp_pixel`: the sharpest pixel above its 3x3 median, on the data's linear scale (the
  normalising stretch undone: an asinh stretch squeezes a 20-sigma hit to a few units), in
  units of the noise there (the sky's, grown with the light as photon noise does): cosmic
  rays, hot pixels;
- `fine_segment`: the strongest 11-pixel straight segment of the fine structure (the stamp
  minus its 5x5 median): thin streaks, partial columns;
- `flat_run`: a run of 20 pixels along a column or row with far less spread than the runs
  beside it (dead columns: real sky always has noise, and a clipped black level is flat on
  every side);
- `straight_line`: the brightest straight ridge across the stamp (the projection along one
  angle, above the parallel lines 3 pixels to either side) beyond the same at a typical
  angle: a satellite trail is a ridge at one angle, a star or a galaxy looks alike at all;
- `radial_streaks`: the mean of the 4 strongest rays of fine structure leaving the brightest
  source, 2-20 pixels out and at least 15 degrees apart: diffraction spikes.

`significance` turns them into one score: each statistic's robust z over all objects (from
the median, in units of the spread of its upper tail), and the largest of them, with the
statistic that gave it. The most significant departure, whichever it is: a one-pixel hit and a
whole missing band both come out on top, and so does a galaxy the model cannot reconstruct.
Nothing here knows the benchmark's kinds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LINE_ANGLES = 12
SEGMENT = 11  # pixels
FLAT_RUN = 20  # pixels
CHUNK = 64  # stamps per step (the median filters unfold k*k copies of the pixels)
RIDGE_ANGLES = 24
RIDGE_OFFSET = 3  # pixels: a ridge stands above the lines this far to either side
RAY_ANGLES = 96
RAY_RADII = (2.0, 20.0)  # pixels from the source
RAY_STEPS = 40
RAYS = 4  # the strongest rays averaged (a diffraction pattern has four or more)
RAY_APART = 4  # neighbouring angles (of RAY_ANGLES) taken by one ray: 15 degrees
LINEAR = {"asinh": torch.sinh, "log": torch.expm1}  # undo a normalising stretch
NAMES_RESIDUAL = ("residual_energy", "residual_line")  # the statistics of a residual


def _median_filter(t: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median, approximated separably (the median of the k row medians): k + k values
    sorted per pixel instead of k * k."""
    p = F.pad(t, (k // 2,) * 4, mode="replicate")
    rows = p.unfold(3, k, 1).median(-1).values  # (n, b, h + k - 1, w)
    return rows.unfold(2, k, 1).median(-1).values


def _noise(t: torch.Tensor) -> torch.Tensor:
    """Robust sigma about 0 per stamp and band, as (n, b, 1, 1): 1.4826 x the median of |t|
    over the pixels where t is not exactly 0 (saturated or clipped areas have no noise to
    measure), never below 1e-3 of the band's range."""
    flat = t.flatten(2).abs()
    sig = 1.4826 * torch.where(flat > 0, flat, torch.nan).nanmedian(2).values
    span = flat.amax(2)
    return torch.maximum(torch.nan_to_num(sig, nan=0.0), 1e-3 * span).clamp_min(1e-6)[
        ..., None, None]


def _segment_kernels(length: int = SEGMENT, n_angles: int = LINE_ANGLES) -> torch.Tensor:
    """Straight-line kernels at `n_angles` angles, scaled to unit noise gain."""
    c = length // 2
    kernels = []
    for a in np.linspace(0, np.pi, n_angles, endpoint=False):
        k = np.zeros((length, length), np.float32)
        for s in np.linspace(-c, c, 4 * length):
            k[int(round(c + s * np.sin(a))), int(round(c + s * np.cos(a)))] = 1.0
        kernels.append(k / np.sqrt(k.sum()))
    return torch.from_numpy(np.stack(kernels))[:, None]


_KERNELS = _segment_kernels()


def _strongest_segment(z: torch.Tensor) -> torch.Tensor:
    n, b, h, w = z.shape
    resp = F.conv2d(z.reshape(n * b, 1, h, w), _KERNELS, padding=SEGMENT // 2)
    return resp.abs().amax((1, 2, 3)).reshape(n, b)


def _projections(z: torch.Tensor, n_angles: int, shortest: float) -> torch.Tensor:
    """Sums along straight lines / sqrt(their length), (n, b, angles, offsets); NaN for lines
    shorter than `shortest` x the stamp's height (corners)."""
    n, b, h, w = z.shape
    ones = torch.ones(n, 1, h, w)
    out = []
    for a in torch.linspace(0, np.pi, n_angles + 1)[:-1]:
        c, s = torch.cos(a), torch.sin(a)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(n, 2, 3)
        grid = F.affine_grid(theta, [n, b, h, w], align_corners=False)
        along = F.grid_sample(z, grid, align_corners=False).sum(2)
        count = F.grid_sample(ones, grid, align_corners=False).sum(2)
        out.append(torch.where(count > shortest * h, along / count.clamp_min(1.0).sqrt(),
                               torch.full_like(along, torch.nan)))
    return torch.stack(out, 2)


def _strongest_line(z: torch.Tensor) -> torch.Tensor:
    """|sum along a full line| / sqrt(its length), the best over angles and offsets: (n, b)."""
    p = _projections(z, LINE_ANGLES, 1 / 3)
    return torch.nan_to_num(p.abs(), nan=0.0).flatten(2).amax(2)


def _straight_line(z: torch.Tensor, d: int = RIDGE_OFFSET) -> torch.Tensor:
    """The brightest ridge of the projections (above the lines `d` pixels to either side),
    at its best angle minus at the median angle: (n, 1) for band-summed `z`."""
    p = _projections(z, RIDGE_ANGLES, 1 / 2)
    ridge = p - torch.maximum(torch.roll(p, d, -1), torch.roll(p, -d, -1))
    ridge = torch.nan_to_num(ridge[..., d:-d], nan=-1e9).amax(-1)  # (n, b, angles)
    return ridge.amax(-1) - ridge.median(-1).values


def _brightest(t: torch.Tensor) -> torch.Tensor:
    """(n, 2) row, column of the brightest 3x3 patch of the band-summed stamp."""
    smooth = F.avg_pool2d(t.sum(1, keepdim=True), 3, 1, 1)
    idx = smooth.flatten(1).argmax(1)
    w = t.shape[-1]
    return torch.stack([idx // w, idx % w], 1).float()


def _radial_streaks(z: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """The mean of the RAYS strongest rays of band-summed `z` (n, 1, h, w) from `centre`,
    each ray's sum / sqrt(its length inside the stamp), each at least RAY_APART angles from
    the others: (n, 1)."""
    n, _, h, w = z.shape
    angle = torch.linspace(0, 2 * np.pi, RAY_ANGLES + 1)[:-1]
    radius = torch.linspace(*RAY_RADII, RAY_STEPS)
    yy = centre[:, 0, None, None] + radius * torch.sin(angle)[None, :, None]
    xx = centre[:, 1, None, None] + radius * torch.cos(angle)[None, :, None]
    grid = torch.stack([(xx + 0.5) / w * 2 - 1, (yy + 0.5) / h * 2 - 1], -1)
    values = F.grid_sample(z, grid, align_corners=False)[:, 0]  # (n, angles, steps)
    inside = ((xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)).float()
    rays = (values * inside).sum(-1) / inside.sum(-1).clamp_min(1).sqrt()
    index = torch.arange(RAY_ANGLES)
    best = []
    for _ in range(RAYS):
        v, i = rays.max(1)
        best.append(v)
        apart = (index - i[:, None]).abs()
        rays = torch.where(torch.minimum(apart, RAY_ANGLES - apart) <= RAY_APART,
                           torch.full_like(rays, -1e9), rays)
    return torch.stack(best, 1).mean(1, keepdim=True)


def _run_spread(t: torch.Tensor, run: int, along: int) -> torch.Tensor:
    """Standard deviation over every run of `run` pixels along dim `along` (2: columns)."""
    kernel = (run, 1) if along == 2 else (1, run)
    mean = F.avg_pool2d(t, kernel, stride=1)
    return (F.avg_pool2d(t * t, kernel, stride=1) - mean * mean).clamp_min(0).sqrt()


def _flat_run(t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """How much flatter a run of FLAT_RUN pixels along a column (row) is than the runs two
    columns (rows) away on either side, as a log ratio: a dead column is flat where its
    neighbours have noise; sky clipped at a display's black level is flat all around."""
    h, w = t.shape[-2:]
    run = min(FLAT_RUN, h, w)
    best = []
    for along, side in ((2, 3), (3, 2)):  # runs along columns, then along rows
        spread = torch.maximum(_run_spread(t, run, along), 1e-3 * sigma)
        n = spread.shape[side] - 4
        beside = torch.maximum(spread.narrow(side, 0, n), spread.narrow(side, 4, n))
        best.append(torch.log(beside / spread.narrow(side, 2, n)).flatten(2).amax(2))
    return torch.maximum(*best)


def _per_band(values: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The largest value over bands, and (several bands) its margin over the next."""
    out = {}
    for name, v in values.items():
        ordered = v.sort(1, descending=True).values.double().numpy()
        out[name] = ordered[:, 0]
        if ordered.shape[1] > 1:
            out[name + "_one_band"] = ordered[:, 0] - ordered[:, 1]
    return out


def _shot_noise(sharp: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """The noise of each pixel on a linear scale, (n, b, h, w): the sky's robust sigma, grown
    as the square root of the light above the stamp's median (photon noise): sigma *
    sqrt(1 + light / sigma). A star's core is as sharp as its own noise allows; a cosmic ray
    on the sky is far sharper."""
    sigma = _noise(sharp)
    light = (level - level.flatten(2).median(2).values[..., None, None]).clamp_min(0)
    return sigma * (1 + light / sigma).sqrt()


def _band_sum(z: torch.Tensor) -> torch.Tensor:
    """Noise-normalised bands summed, in noise units again: (n, 1, h, w)."""
    return z.sum(1, keepdim=True) / np.sqrt(z.shape[1])


def stamp_statistics(images: torch.Tensor, residuals: torch.Tensor | None = None, *,
                     stretch: str = "none") -> dict[str, np.ndarray]:
    """Per stamp (n,): the statistics above of (n, bands, h, w) normalised `images` and, when
    given, their reconstruction `residuals` (reconstruction - input). `stretch`: the
    normalisation the images went through ("asinh", "log", ...; see data.normalize), undone
    for the statistics that need a linear scale."""
    linear = LINEAR.get(stretch, lambda v: v)
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, len(images), CHUNK):
        t = images[i:i + CHUNK].detach().float().cpu()
        sharp = t - _median_filter(t, 3)
        sig3 = _noise(sharp)
        flux = linear(t)
        flux_med3 = _median_filter(flux, 3)
        sharp_flux = flux - flux_med3
        fine = t - _median_filter(t, 5)
        fine_z = (fine / _noise(fine)).clamp(-20, 20)
        level = t - t.flatten(2).median(2).values[..., None, None]
        values = {"sharp_pixel": (sharp_flux / _shot_noise(sharp_flux, flux_med3)).amax((2, 3)),
                  "fine_segment": _strongest_segment(fine_z),
                  "flat_run": _flat_run(t, sig3),
                  "straight_line": _straight_line(_band_sum((level / sig3).clamp(-20, 20))),
                  "radial_streaks": _radial_streaks(_band_sum(fine_z), _brightest(t))}
        if residuals is not None:
            r = residuals[i:i + CHUNK].detach().float().cpu()
            values["residual_energy"] = r.pow(2).mean((2, 3)).clamp_min(1e-12).log()
            values["residual_line"] = _strongest_line((r / _noise(r)).clamp(-20, 20))
        parts.append(_per_band(values))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def robust_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, spread of the upper tail): (97.5th percentile - median) / 1.96, the Gaussian
    sigma when the tail is Gaussian; the standard deviation when that spread is 0, and 0
    when both are. NaNs are left out."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).any():
        return 0.0, 0.0
    med = float(np.nanmedian(v))
    scale = float((np.nanpercentile(v, 97.5) - med) / 1.96)
    if not scale > 0:
        scale = float(np.nanstd(v))
    return med, scale if scale > 0 else 0.0


def robust_z(values: np.ndarray, median: float | None = None,
             scale: float | None = None) -> np.ndarray:
    """(v - median) / the spread of the upper tail (`robust_scale`, of `values` unless both
    are given: a population measured before). A statistic whose ordinary objects already
    reach far (the longest line through a large galaxy) counts less per unit than one whose
    ordinary objects all sit close together (the residual of a missing band). Zeros where the
    spread is 0."""
    v = np.asarray(values, dtype=np.float64)
    if median is None or scale is None:
        median, scale = robust_scale(v)
    return np.zeros_like(v) if not scale > 0 else (v - median) / scale


def significance(statistics: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(score, statistic): for each object the largest robust z of its statistics, and the
    name of the statistic that gave it."""
    names = sorted(statistics)
    z = np.stack([robust_z(statistics[k]) for k in names], axis=1)
    z = np.nan_to_num(z, nan=-np.inf)
    best = z.argmax(axis=1)
    return z[np.arange(len(z)), best], np.asarray(names, dtype=object)[best]
