"""Where and how a stamp departs from what the data usually look like: a few statistics of
each stamp's pixels and, for models that reconstruct their input, of its residual.

Each statistic is measured in noise units of the stamp itself (the robust spread of its fine
structure or of its residual), per band; the band with the largest value gives `<name>`, and
its margin over the next band `<name>_one_band` (something in one band only: a cosmic
ray, a hot column, a missing band). The statistics:

- `residual_energy`: log mean squared residual (the reconstruction error, per band);
- `residual_line`: the strongest straight line through the residual, at any of 12 angles
  (satellite trails, bad columns, a band edge);
- `sharp_pixel`: the sharpest pixel above its 3x3 median (cosmic rays, hot pixels);
- `fine_segment`: the strongest 11-pixel straight segment of the fine structure (the stamp
  minus its 5x5 median): thin streaks, diffraction spikes, partial columns;
- `flat_run`: a run of 20 pixels along a column or row with far less spread than the runs
  beside it (dead columns: real sky always has noise, and a clipped black level is flat on
  every side).

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


def _strongest_line(z: torch.Tensor) -> torch.Tensor:
    """|sum along a full line| / sqrt(its length), the best over angles and offsets: (n, b)."""
    n, b, h, w = z.shape
    best = torch.zeros(n, b)
    ones = torch.ones(n, 1, h, w)
    for a in torch.linspace(0, np.pi, LINE_ANGLES + 1)[:-1]:
        c, s = torch.cos(a), torch.sin(a)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(n, 2, 3)
        grid = F.affine_grid(theta, [n, b, h, w], align_corners=False)
        along = F.grid_sample(z, grid, align_corners=False).sum(2)
        count = F.grid_sample(ones, grid, align_corners=False).sum(2)
        value = torch.where(count > h / 3, along / count.clamp_min(1.0).sqrt(),
                            torch.zeros_like(along))
        best = torch.maximum(best, value.abs().amax(2))
    return best


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
    out = {}
    for name, v in values.items():
        ordered = v.sort(1, descending=True).values.double().numpy()
        out[name] = ordered[:, 0]
        if ordered.shape[1] > 1:
            out[name + "_one_band"] = ordered[:, 0] - ordered[:, 1]
    return out


def stamp_statistics(images: torch.Tensor, residuals: torch.Tensor | None = None
                     ) -> dict[str, np.ndarray]:
    """Per stamp (n,): the statistics above of (n, bands, h, w) normalised `images` and, when
    given, their reconstruction `residuals` (reconstruction - input)."""
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, len(images), CHUNK):
        t = images[i:i + CHUNK].detach().float().cpu()
        med3 = _median_filter(t, 3)
        sharp = t - med3
        sig3 = _noise(sharp)
        fine = t - _median_filter(t, 5)
        values = {"sharp_pixel": (sharp / sig3).amax((2, 3)),
                  "fine_segment": _strongest_segment((fine / _noise(fine)).clamp(-20, 20)),
                  "flat_run": _flat_run(t, sig3)}
        if residuals is not None:
            r = residuals[i:i + CHUNK].detach().float().cpu()
            values["residual_energy"] = r.pow(2).mean((2, 3)).clamp_min(1e-12).log()
            values["residual_line"] = _strongest_line((r / _noise(r)).clamp(-20, 20))
        parts.append(_per_band(values))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / the spread of the upper tail: (95th percentile - median) / 1.645, the
    Gaussian sigma when the tail is Gaussian. A statistic whose ordinary objects already
    reach far (the longest line through a large galaxy) counts less per unit than one whose
    ordinary objects all sit close together (the residual of a missing band). The standard
    deviation when that spread is 0, zeros when both are."""
    v = np.asarray(values, dtype=np.float64)
    med = np.nanmedian(v)
    scale = (np.nanpercentile(v, 95) - med) / 1.645
    if not scale > 0:
        scale = np.nanstd(v)
    return np.zeros_like(v) if not scale > 0 else (v - med) / scale


def significance(statistics: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(score, statistic): for each object the largest robust z of its statistics, and the
    name of the statistic that gave it."""
    names = sorted(statistics)
    z = np.stack([robust_z(statistics[k]) for k in names], axis=1)
    z = np.nan_to_num(z, nan=-np.inf)
    best = z.argmax(axis=1)
    return z[np.arange(len(z)), best], np.asarray(names, dtype=object)[best]
