"""Statistics for results: bootstrap confidence intervals over trials, smoothing.

Only numpy is needed. Missing values (NaN) mean "no data": a trial that diverged has
NaN at every episode after it was stopped, and is left out of the mean there.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "smooth"]

# Bound on resamples x trials x columns held at once (floats) by bootstrap_ci.
_CHUNK_ELEMENTS = 4_000_000


def bootstrap_ci(
    values,
    level: float = 0.98,
    n_resamples: int = 500,
    seed: int = 0,
    axis: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over trials and its percentile-bootstrap confidence interval.

    Args:
        values: array with trials along ``axis``, e.g. ``(trials,)`` or
            ``(trials, episodes)``. NaN (and inf) entries are ignored: each position
            (e.g. each episode) uses only the trials that have a value there, so a
            diverged trial (NaN after it stopped) drops out of the later episodes.
            Trials with no value at all are dropped first, so adding them changes
            nothing, not even the random draws.
        level: coverage of the interval (0.98 gives the 1st and 99th percentiles).
        n_resamples: number of bootstrap resamples of the trials.
        seed: seed of the resampling; the result is a deterministic function of it.
        axis: the trial axis.

    Returns:
        ``(mean, low, high)``, each with ``axis`` removed (0-d arrays for 1-d input).
        Where only one trial has a value, ``low == high == mean``; where none has,
        all three are NaN.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    x = np.moveaxis(np.asarray(values, dtype=float), axis, 0)
    rest = x.shape[1:]
    n_trials = x.shape[0]
    x = x.reshape(n_trials, -1)  # (T, C)
    n_cols = x.shape[1]
    x = x[np.isfinite(x).any(axis=1)]  # all-NaN rows (trials) play no part, even in draws
    n_trials = x.shape[0]

    valid = np.isfinite(x)
    counts = valid.sum(axis=0)  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, x, 0.0).sum(axis=0) / counts
    mean[counts == 0] = np.nan
    low = np.full(n_cols, np.nan)
    high = np.full(n_cols, np.nan)
    if n_trials == 0 or n_cols == 0:
        return mean.reshape(rest), low.reshape(rest), high.reshape(rest)

    # Per column, put the valid trials first; then resampling column c means drawing
    # counts[c] indices uniformly from 0 .. counts[c] - 1.
    order = np.argsort(~valid, axis=0, kind="stable")
    packed = np.take_along_axis(x, order, axis=0)  # (T, C)
    rng = np.random.default_rng(seed)
    uniforms = rng.random((n_resamples, n_trials))  # shared by all columns
    draw_mask = np.arange(n_trials)[None, :, None] < counts[None, None, :]
    q = [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0]

    step = max(1, _CHUNK_ELEMENTS // max(1, n_resamples * n_trials))
    for start in range(0, n_cols, step):
        cols = slice(start, start + step)
        n = counts[cols]  # (c,)
        idx = np.minimum((uniforms[:, :, None] * n).astype(np.int64), np.maximum(n - 1, 0))
        draws = np.take_along_axis(packed[None, :, cols], idx, axis=1)  # (B, T, c)
        m = draw_mask[:, :, cols]
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(m, draws, 0.0).sum(axis=1) / n  # (B, c)
        ok = n > 0
        if ok.any():
            lo_hi = np.quantile(boot[:, ok], q, axis=0)
            low[cols][ok] = lo_hi[0]
            high[cols][ok] = lo_hi[1]
    return mean.reshape(rest), low.reshape(rest), high.reshape(rest)


def smooth(x, window: int = 10, centred: bool = True) -> np.ndarray:
    """Moving average along the last axis, same shape as ``x``.

    Each output point is the mean of the input points inside its window: a centred
    window by default (no lag: ``window // 2`` points after and ``(window - 1) // 2``
    before), or a trailing one (the point and the ``window - 1`` before it).

    Edges and NaN: the window is cut at the ends of the series (so ``window`` larger
    than the series is fine: each point averages what exists), and NaN inputs are left
    out of the averages. A NaN input stays NaN in the output, so a diverged trial stays
    missing after it stopped instead of being filled in by its neighbours.
    ``window <= 1`` returns a float copy.
    """
    a = np.asarray(x, dtype=float)
    if window <= 1 or a.shape[-1] == 0:
        return a.copy()
    n = a.shape[-1]
    finite = np.isfinite(a)
    pad = [(0, 0)] * (a.ndim - 1) + [(1, 0)]
    csum = np.pad(np.cumsum(np.where(finite, a, 0.0), axis=-1), pad)
    ccount = np.pad(np.cumsum(finite, axis=-1), pad)
    i = np.arange(n)
    if centred:
        lo, hi = i - (window - 1) // 2, i + window // 2 + 1
    else:
        lo, hi = i - window + 1, i + 1
    lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
    total = csum[..., hi] - csum[..., lo]
    count = ccount[..., hi] - ccount[..., lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[~finite] = np.nan
    return out
