"""The paper's figures from run folders (history.csv), with matplotlib and seaborn.

Every curve is the mean over trials with a shaded percentile-bootstrap band (98%, 500
resamples by default), after smoothing each trial's curve over ``window`` episodes
(centred moving average, see stats.smooth). Trials that diverged have no rows after
they stopped; they leave the mean from there on. A single trial gives a line without
a band. Each plotting function takes an optional ``ax`` and returns it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .results import N_TERMS, history_n_layers, pivot_trials, read_history
from .stats import bootstrap_ci, smooth

__all__ = [
    "TERM_NAMES",
    "curve_with_band",
    "plot_meta_curves",
    "plot_theta_trajectories",
    "plot_alignment",
    "plot_orthonormality",
    "plot_online_curves",
    "figures_from_results",
]

TERM_NAMES = {
    0: "pseudo-grad",
    1: "post y x pre e",
    2: "eHebb",
    3: "decay",
    4: "pre e bcast",
    5: "scaled pseudo-grad",
    6: "higher order",
    7: "higher order",
    8: "higher order",
    9: "Oja",
}
_YLABELS = {
    "meta_accuracy": "meta-accuracy (query)",
    "meta_loss": "meta-loss (query)",
}
_LINESTYLES = ["-", "--", ":", "-."]

Runs = Mapping[str, pd.DataFrame] | pd.DataFrame


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    return ax


def _as_runs(runs: Runs) -> dict[str, pd.DataFrame]:
    """A single DataFrame counts as one unlabelled run."""
    return {"": runs} if isinstance(runs, pd.DataFrame) else dict(runs)


def _colors(n: int) -> list:
    return sns.color_palette("deep", max(n, 1))


def _legend(ax: Axes, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(fontsize="small", **kw)


def curve_with_band(
    ax: Axes | None,
    episodes,
    values_trials_by_episodes,
    label: str,
    color=None,
    window: int = 10,
    level: float = 0.98,
    n_resamples: int = 500,
    seed: int = 0,
    **line_kw,
) -> Axes:
    """Plot the smoothed mean over trials with its bootstrap band.

    Args:
        episodes: x values, shape ``(n,)``.
        values_trials_by_episodes: ``(trials, n)`` (or ``(n,)`` for one trial); NaN
            where a trial has no value (it drops out of the mean there).
        window: moving-average window applied to each trial before averaging.
        level, n_resamples, seed: of the percentile bootstrap over trials.
        line_kw: passed to ``ax.plot`` (e.g. ``linestyle``).

    The band is drawn only where at least two trials have values.
    """
    ax = _axes(ax)
    x = np.asarray(episodes)
    v = smooth(np.atleast_2d(np.asarray(values_trials_by_episodes, dtype=float)), window)
    mean, low, high = bootstrap_ci(v, level=level, n_resamples=n_resamples, seed=seed)
    (line,) = ax.plot(x, mean, label=label, color=color, **line_kw)
    band = np.isfinite(v).sum(axis=0) >= 2
    if band.any():
        ax.fill_between(x, np.where(band, low, mean), np.where(band, high, mean), where=band,
                        color=line.get_color(), alpha=0.25, linewidth=0)
    return ax


def plot_meta_curves(
    runs: Runs,
    column: str = "meta_accuracy",
    ax: Axes | None = None,
    window: int = 10,
    level: float = 0.98,
    n_resamples: int = 500,
) -> Axes:
    """One curve per run: ``column`` against episode, mean over trials with a band.

    The legend gives each run's number of trials. Runs may have different lengths.
    """
    ax = _axes(ax)
    runs = _as_runs(runs)
    for color, (name, df) in zip(_colors(len(runs)), runs.items()):
        eps, vals, trials = pivot_trials(df, column)
        label = f"{name} ({len(trials)} trials)" if name else ""
        curve_with_band(ax, eps, vals, label, color=color, window=window, level=level,
                        n_resamples=n_resamples)
    ax.set_xlabel("episode")
    ax.set_ylabel(_YLABELS.get(column, column))
    _legend(ax)
    return ax


def _theta_columns(df: pd.DataFrame) -> list[int]:
    """Terms r whose theta_r column has at least one value (the active terms)."""
    out = []
    for r in range(N_TERMS):
        c = f"theta_{r}"
        if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any():
            out.append(r)
    return out


def plot_theta_trajectories(
    df: pd.DataFrame,
    ax: Axes | None = None,
    window: int = 1,
    level: float = 0.98,
    n_resamples: int = 500,
) -> Axes:
    """One line per active term r: theta_r against episode, mean over trials, band.

    Inactive terms (blank columns) are skipped; the legend names each term.
    """
    ax = _axes(ax)
    terms = _theta_columns(df)
    palette = sns.color_palette("tab10", N_TERMS)
    for r in terms:
        eps, vals, _ = pivot_trials(df, f"theta_{r}")
        curve_with_band(ax, eps, vals, rf"$\theta_{{{r}}}$ {TERM_NAMES[r]}", color=palette[r],
                        window=window, level=level, n_resamples=n_resamples)
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_xlabel("episode")
    ax.set_ylabel(r"$\theta_r$")
    _legend(ax, ncol=2 if len(terms) > 5 else 1)
    return ax


def _per_layer(
    runs: Runs,
    prefix: str,
    ax: Axes | None,
    layers: Sequence[int] | None,
    window: int,
    symbol: str,
    **band_kw,
) -> Axes:
    """Curves of ``{prefix}_{l}`` per run and layer.

    Colour tells runs apart when there are several (line style then tells layers
    apart); with one run, colour tells layers apart.
    """
    ax = _axes(ax)
    runs = _as_runs(runs)
    if layers is None:
        found = {int(c.rsplit("_", 1)[1]) for df in runs.values() for c in df.columns
                 if c.startswith(prefix + "_") and c.rsplit("_", 1)[1].isdigit()}
        layers = sorted(found)
    layers = list(layers)
    if not layers:
        ax.text(0.5, 0.5, f"no {prefix} columns", ha="center", va="center",
                transform=ax.transAxes)
        return ax
    many_runs = len(runs) > 1
    colors = _colors(len(runs) if many_runs else len(layers))
    for i, (name, df) in enumerate(runs.items()):
        for j, l in enumerate(layers):
            column = f"{prefix}_{l}"
            if column not in df.columns:
                continue
            parts = [name] if name else []
            if len(layers) > 1:
                parts.append(f"${symbol}_{{{l}}}$")
            eps, vals, _ = pivot_trials(df, column)
            curve_with_band(
                ax, eps, vals, ": ".join(parts),
                color=colors[i] if many_runs else colors[j],
                linestyle=_LINESTYLES[j % len(_LINESTYLES)] if many_runs else "-",
                window=window, **band_kw,
            )
    ax.set_xlabel("episode")
    _legend(ax)
    return ax


def plot_alignment(
    runs: Runs,
    ax: Axes | None = None,
    layers: Sequence[int] | None = None,
    window: int = 10,
    which: str = "alpha",
    **band_kw,
) -> Axes:
    """Alignment angles against episode, per layer and run (mean over trials, band).

    ``which="alpha"`` (default) plots alpha_l, the angle between the teaching signal
    through B and through W^T (layers 1..L-1); ``which="weight_angle"`` plots the angle
    between W_l and B_l^T. ``layers`` picks layers (default: all present).
    """
    if which not in ("alpha", "weight_angle"):
        raise ValueError(f"which must be 'alpha' or 'weight_angle', got {which!r}")
    symbol = r"\alpha" if which == "alpha" else r"\angle"
    ax = _per_layer(runs, which, ax, layers, window, symbol, **band_kw)
    ax.set_ylabel("alignment angle (deg)" if which == "alpha" else "angle W, B^T (deg)")
    return ax


def plot_orthonormality(
    runs: Runs,
    ax: Axes | None = None,
    layers: Sequence[int] | None = None,
    window: int = 10,
    **band_kw,
) -> Axes:
    """Orthonormality error E_l against episode, per layer and run.

    The y axis is logarithmic when every plotted value is positive.
    """
    ax = _per_layer(runs, "ortho", ax, layers, window, "E", **band_kw)
    ax.set_ylabel(r"orthonormality error $E_l$")
    ys = [ln.get_ydata() for ln in ax.get_lines()]
    ys = np.concatenate([np.asarray(y, float) for y in ys]) if ys else np.array([])
    ys = ys[np.isfinite(ys)]
    if ys.size and (ys > 0).all():
        ax.set_yscale("log")
    return ax


def plot_online_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ax: Axes | None = None,
    ylabel: str = "test accuracy",
    xlabel: str = "training samples",
    window: int = 1,
    level: float = 0.98,
    n_resamples: int = 500,
) -> Axes:
    """Curves of online learning (Fig 1): label -> (steps (n,), values (trials, n))."""
    ax = _axes(ax)
    for color, (name, (steps, values)) in zip(_colors(len(curves)), curves.items()):
        curve_with_band(ax, steps, values, name, color=color, window=window, level=level,
                        n_resamples=n_resamples)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _legend(ax)
    return ax


# ---------------------------------------------------------------------- whole figures


def _size(df: pd.DataFrame) -> tuple[int, int]:
    """(number of trials, number of episodes) of a history."""
    return int(df["trial"].nunique()), int(df["episode"].nunique())


def _describe(runs: Mapping[str, pd.DataFrame]) -> str:
    """'3 trials, 30 episodes' when all runs agree, else one entry per run."""
    sizes = {name: _size(df) for name, df in runs.items()}
    if len(set(sizes.values())) == 1:
        t, e = next(iter(sizes.values()))
        return f"{t} trials, {e} episodes" + (" per run" if len(runs) > 1 else "")
    parts = [f"{n}: {t}x{e}" for n, (t, e) in sizes.items()]
    return "trials x episodes: " + ", ".join(parts)


def _default_labels(folders: Sequence[Path]) -> list[str]:
    """Folder names, or parent/name where names repeat."""
    names = [f.name for f in folders]
    if len(set(names)) == len(names):
        return names
    return [f"{f.parent.name}/{f.name}" for f in folders]


def _grid(n: int, ncols_max: int = 3, panel=(5.0, 3.8)) -> tuple[Figure, list[Axes]]:
    ncols = min(n, ncols_max)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def figures_from_results(
    folders: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Sequence[str] | None = None,
    prefix: str = "",
    window: int = 10,
    dpi: int = 120,
) -> list[Path]:
    """Write the meta-training figures of one or more run folders as PNGs.

    Reads each folder's history.csv and writes into ``out_dir``:
    ``{prefix}meta_accuracy.png``, ``{prefix}meta_loss.png``, ``{prefix}theta.png``
    (one panel per run), ``{prefix}alignment.png`` and ``{prefix}orthonormality.png``
    (one panel per layer, runs compared within a panel). Titles give the number of
    trials and episodes. ``labels`` name the runs (default: folder names).

    Returns the paths written.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("no run folders given")
    labels = list(labels) if labels is not None else _default_labels(folders)
    if len(labels) != len(folders) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per folder, got {labels} for {len(folders)}")
    runs = {name: read_history(f) for name, f in zip(labels, folders)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = _describe(runs)
    band = "mean over trials, 98% bootstrap band"
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out_dir / f"{prefix}{name}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)

    with sns.axes_style("whitegrid"):
        for column, title in (("meta_accuracy", "Meta-accuracy"), ("meta_loss", "Meta-loss")):
            fig, (ax,) = _grid(1, panel=(6.4, 4.2))
            plot_meta_curves(runs, column, ax=ax, window=window)
            ax.set_title(f"{title}: {desc}\n{band}, smoothed over {window} episodes",
                         fontsize="medium")
            save(fig, column)

        fig, axes = _grid(len(runs))
        for ax, (name, df) in zip(axes, runs.items()):
            plot_theta_trajectories(df, ax=ax)
            t, e = _size(df)
            ax.set_title(f"{name}: {t} trials, {e} episodes", fontsize="medium")
        fig.suptitle(rf"Plasticity coefficients $\theta_r$ ({band})", fontsize="medium")
        save(fig, "theta")

        for prefix_col, name, plot in (("alpha", "alignment", plot_alignment),
                                       ("ortho", "orthonormality", plot_orthonormality)):
            layers = sorted({l for df in runs.values() for l in range(1, history_n_layers(df) + 1)
                             if f"{prefix_col}_{l}" in df.columns})
            fig, axes = _grid(max(1, len(layers)))
            if not layers:
                plot(runs, ax=axes[0], window=window)
            for ax, l in zip(axes, layers):
                plot(runs, ax=ax, layers=[l], window=window)
                ax.set_title(f"layer {l}", fontsize="medium")
            what = "Alignment angle" if name == "alignment" else "Orthonormality error"
            fig.suptitle(f"{what} per layer: {desc}\n{band}", fontsize="medium")
            save(fig, name)
    return written
