"""The paper's figures from run folders (history.csv), with matplotlib and seaborn.

Every curve is the mean over trials with a shaded percentile-bootstrap band (98%, 500
resamples by default), after smoothing each trial's curve over ``window`` episodes
(centred moving average, see stats.smooth). Trials that diverged have no rows after
they stopped; they leave the mean from there on. A single trial gives a line without
a band. Each plotting function takes an optional ``ax`` and returns it.

Conventions of every figure here: accuracy axes carry a thin grey dashed chance line
(1/M for M-way tasks, "chance (20%)" for the default M = 5; see :func:`add_chance_line`);
legends sit outside the data area (right of an axes, or below a grid of panels), never
over the curves; term names and counts come from :data:`labkit.terms.TERMS`, so a term
added there is labelled everywhere without touching this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .feedback_terms import FEEDBACK_TERMS
from .results import history_n_layers, pivot_trials, read_config, read_history
from .stats import bootstrap_ci, smooth
from .terms import TERMS

__all__ = [
    "TERM_NAMES",
    "DEFAULT_WAYS",
    "chance_level",
    "add_chance_line",
    "theta_label",
    "active_terms",
    "curve_with_band",
    "plot_meta_curves",
    "plot_theta_trajectories",
    "plot_theta_panels",
    "phi_label",
    "active_feedback_terms",
    "plot_phi_trajectories",
    "plot_alignment",
    "plot_orthonormality",
    "plot_online_curves",
    "figures_from_results",
    "plot_sweep",
    "plot_accuracy_vs_K",
    "plot_depth_study",
    "plot_online_study_curves",
]

#: Short legend label of each term, by index (``Term.short`` of :data:`labkit.terms.TERMS`).
TERM_NAMES: dict[int, str] = {t.index: t.short for t in TERMS}
#: Number of ways M of the few-shot tasks when a run does not say (``MetaConfig.M``).
DEFAULT_WAYS = 5
_YLABELS = {
    "meta_accuracy": "meta-accuracy (query)",
    "meta_loss": "meta-loss (query)",
}
_LINESTYLES = ["-", "--", ":", "-."]
_THETA_COLUMN = re.compile(r"theta_(\d+)$")
_PHI_COLUMN = re.compile(r"phi_(\d+)$")
#: Short legend label of each feedback term (plastic feedback), by index.
_FEEDBACK_SHORT: dict[int, str] = {t.index: t.short for t in FEEDBACK_TERMS}
#: Legend of one axes: outside, right of its data area (constrained layout or
#: ``bbox_inches="tight"`` make room for it).
_OUTSIDE_RIGHT = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)

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
    """The axes' legend, outside its data area (right of it), if anything is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(**{"fontsize": "small", "frameon": False, **_OUTSIDE_RIGHT, **kw})


def _figure_legend(fig: Figure, axes: Sequence[Axes], ncol: int = 4) -> None:
    """One legend below all panels of ``fig`` (a constrained layout) for the labelled
    artists of ``axes`` (each label once); the axes' own legends are removed."""
    found: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if found:
        fig.legend(list(found.values()), list(found), loc="outside lower center",
                   ncol=min(ncol, len(found)), fontsize="small", frameon=False)


def chance_level(n_ways: int | None = None) -> float:
    """Accuracy of guessing among ``n_ways`` classes, 1/n_ways (default :data:`DEFAULT_WAYS`)."""
    n = DEFAULT_WAYS if n_ways is None else int(n_ways)
    if n < 1:
        raise ValueError(f"the number of ways must be at least 1, got {n_ways}")
    return 1.0 / n


def add_chance_line(ax: Axes, level: float | None = None) -> Line2D:
    """A thin grey dashed horizontal line at the chance ``level`` (default 1/5, the
    paper's 5-way tasks), labelled e.g. "chance (20%)"; returns the line."""
    level = chance_level() if level is None else float(level)
    return ax.axhline(level, color="0.55", linestyle="--", linewidth=0.9, zorder=1.5,
                      label=f"chance ({100 * level:.3g}%)")


def theta_label(r: int) -> str:
    """Legend label of theta_r: symbol and short name, or the symbol alone for an index
    the term table does not list."""
    name = TERM_NAMES.get(r)
    return rf"$\theta_{{{r}}}$ {name}" if name else rf"$\theta_{{{r}}}$"


def phi_label(s: int) -> str:
    """Legend label of phi_s (a feedback term's coefficient, plastic feedback): symbol and
    short name, or the symbol alone for an index the feedback term table does not list."""
    name = _FEEDBACK_SHORT.get(s)
    return rf"$\phi_{{{s}}}$ {name}" if name else rf"$\phi_{{{s}}}$"


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
    chance: float | None = 1.0 / DEFAULT_WAYS,
) -> Axes:
    """One curve per run: ``column`` against episode, mean over trials with a band.

    The legend (outside the axes) gives each run's number of trials. Runs may have
    different lengths. An accuracy ``column`` gets a chance line at ``chance`` (pass
    ``chance_level(M)`` for M-way tasks; default 1/5; None draws none).
    """
    ax = _axes(ax)
    runs = _as_runs(runs)
    for color, (name, df) in zip(_colors(len(runs)), runs.items()):
        eps, vals, trials = pivot_trials(df, column)
        label = f"{name} ({len(trials)} trials)" if name else ""
        curve_with_band(ax, eps, vals, label, color=color, window=window, level=level,
                        n_resamples=n_resamples)
    if chance is not None and "accuracy" in column:
        add_chance_line(ax, chance)
    ax.set_xlabel("episode")
    ax.set_ylabel(_YLABELS.get(column, column))
    _legend(ax)
    return ax


def active_terms(df: pd.DataFrame) -> list[int]:
    """Terms r whose ``theta_r`` column has at least one value (the active terms), in
    index order. Every ``theta_<r>`` column of the history counts, whatever the size of
    the term table."""
    return _filled_columns(df, _THETA_COLUMN)


def _filled_columns(df: pd.DataFrame, pattern: re.Pattern) -> list[int]:
    """The indices k of the columns matching ``pattern`` (one group: k) with at least one value."""
    out = []
    for c in df.columns:
        m = pattern.match(str(c))
        if m and pd.to_numeric(df[c], errors="coerce").notna().any():
            out.append(int(m.group(1)))
    return sorted(out)


def active_feedback_terms(df: pd.DataFrame) -> list[int]:
    """Feedback terms s whose ``phi_s`` column has at least one value, in index order; empty
    for a run whose feedback was fixed (its history has no phi columns)."""
    return _filled_columns(df, _PHI_COLUMN)


def _phi_colors(terms: Sequence[int]) -> dict[int, tuple]:
    """A fixed colour per feedback term index (another palette than theta's terms)."""
    n = max([len(FEEDBACK_TERMS), *(s + 1 for s in terms)])
    palette = sns.color_palette("Dark2", n)
    return {s: palette[s] for s in terms}


# what each kind of coefficient is called and drawn with: (column prefix, active terms, label, colours)
_KINDS = {
    "theta": ("theta", lambda df: active_terms(df), lambda r: theta_label(r), lambda ts: _term_colors(ts)),
    "phi": ("phi", lambda df: active_feedback_terms(df), lambda s: phi_label(s), lambda ts: _phi_colors(ts)),
}


def _term_colors(terms: Sequence[int]) -> dict[int, tuple]:
    """A fixed colour per term index (the same term has the same colour in every figure)."""
    n = max([len(TERMS), *(r + 1 for r in terms)])
    palette = sns.color_palette("tab10" if n <= 10 else "tab20", n)
    return {r: palette[r] for r in terms}


def _magnitude(df: pd.DataFrame, r: int) -> float:
    v = pd.to_numeric(df[f"theta_{r}"], errors="coerce").abs()
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) else 0.0


def plot_theta_trajectories(
    df: pd.DataFrame,
    ax: Axes | None = None,
    window: int = 1,
    level: float = 0.98,
    n_resamples: int = 500,
    yscale: str = "auto",
) -> Axes:
    """All active terms on one axes: theta_r against episode, mean over trials, band.

    Inactive terms (blank columns) are skipped; the legend (outside the axes) names each
    term. Coefficients differ by orders of magnitude (theta_5..theta_8 are tiny next to
    theta_0 and theta_2), so ``yscale="auto"`` uses a symmetric log scale (linear within
    +-linthresh around 0, linthresh at the decade of the smallest term) when the terms'
    magnitudes span more than a factor 10; ``"linear"`` or ``"symlog"`` force one. For
    one panel per term, each with its own scale, see :func:`plot_theta_panels`.
    """
    if yscale not in ("auto", "linear", "symlog"):
        raise ValueError(f"yscale must be 'auto', 'linear' or 'symlog', got {yscale!r}")
    ax = _axes(ax)
    terms = active_terms(df)
    colors = _term_colors(terms)
    for r in terms:
        eps, vals, _ = pivot_trials(df, f"theta_{r}")
        curve_with_band(ax, eps, vals, theta_label(r), color=colors[r],
                        window=window, level=level, n_resamples=n_resamples)
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
    sizes = [m for m in (_magnitude(df, r) for r in terms) if m > 0]
    if yscale == "symlog" or (yscale == "auto" and sizes and max(sizes) > 10 * min(sizes)):
        small = max(min(sizes), max(sizes) * 1e-4) if sizes else 1e-3
        ax.set_yscale("symlog", linthresh=10.0 ** np.floor(np.log10(small)), linscale=0.5)
    ax.set_xlabel("episode")
    ax.set_ylabel(r"$\theta_r$" + (" (symlog scale)" if ax.get_yscale() == "symlog" else ""))
    _legend(ax, ncol=2 if len(terms) > 6 else 1)
    return ax


def plot_phi_trajectories(
    df: pd.DataFrame,
    ax: Axes | None = None,
    window: int = 1,
    level: float = 0.98,
    n_resamples: int = 500,
) -> Axes:
    """All plastic feedback terms of a run on one axes: phi_s against episode, mean over
    trials with a bootstrap band (a run with plastic feedback, docs/plastic-feedback.md;
    nothing is drawn for one whose feedback was fixed). The legend names each term."""
    ax = _axes(ax)
    terms = active_feedback_terms(df)
    colors = _phi_colors(terms)
    for s in terms:
        eps, vals, _ = pivot_trials(df, f"phi_{s}")
        curve_with_band(ax, eps, vals, phi_label(s), color=colors[s], window=window, level=level,
                        n_resamples=n_resamples)
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_xlabel("episode")
    ax.set_ylabel(r"$\phi_s$")
    _legend(ax)
    return ax


def _theta_panel(ax: Axes, df: pd.DataFrame, r: int, color, window: int, kind: str = "theta", **band_kw) -> None:
    """theta_r (or, with ``kind="phi"``, phi_r) of one run on its own axes, with its own y
    scale and the zero line."""
    column, _, label, _ = _KINDS[kind]
    eps, vals, _ = pivot_trials(df, f"{column}_{r}")
    curve_with_band(ax, eps, vals, label(r), color=color, window=window, **band_kw)
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_ylabel(label(r), fontsize="small")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useMathText=True)
    ax.yaxis.get_offset_text().set_fontsize("x-small")
    ax.tick_params(labelsize="small")


def plot_theta_panels(
    df: pd.DataFrame,
    axes: Sequence[Axes] | None = None,
    window: int = 1,
    level: float = 0.98,
    n_resamples: int = 500,
) -> list[Axes]:
    """One small panel per active term of one run: theta_r against episode (mean over
    trials, band), each panel with its own y scale, the x axis shared, the term named on
    its y label. ``axes`` (one per active term, see :func:`active_terms`) default to a new
    figure with one row per term. Returns the axes used."""
    terms = active_terms(df)
    if axes is None:
        fig = Figure(figsize=(6.4, 0.6 + 1.45 * max(1, len(terms))), layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(max(1, len(terms)), 1, sharex=True, squeeze=False)).ravel())
    axes = list(axes)
    if len(axes) < len(terms):
        raise ValueError(f"need one axes per active term ({len(terms)}: {terms}), got {len(axes)}")
    colors = _term_colors(terms)
    for i, (ax, r) in enumerate(zip(axes, terms)):
        _theta_panel(ax, df, r, colors[r], window, level=level, n_resamples=n_resamples)
        if i < len(terms) - 1:
            ax.tick_params(labelbottom=False)
    if terms:
        axes[len(terms) - 1].set_xlabel("episode")
    return axes[:len(terms)]


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
    chance: float | None = None,
) -> Axes:
    """Curves of online learning (Fig. 1 of the paper): label -> (steps (n,), values (trials, n)).

    For accuracy curves pass ``chance=chance_level(n_classes)`` (the online stream has all
    classes of the dataset, e.g. 10 for digits: chance 10%) to draw the chance line; these
    curves also serve other quantities (angles), so there is none by default. The legend
    sits outside the axes.
    """
    ax = _axes(ax)
    for color, (name, (steps, values)) in zip(_colors(len(curves)), curves.items()):
        curve_with_band(ax, steps, values, name, color=color, window=window, level=level,
                        n_resamples=n_resamples)
    if chance is not None:
        add_chance_line(ax, chance)
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
    groups: dict[tuple[int, int], list[str]] = {}
    for n, size in sizes.items():
        groups.setdefault(size, []).append(n)
    parts = [f"{t} x {e} ({', '.join(names)})" for (t, e), names in groups.items()]
    return "trials x episodes " + "; ".join(parts)


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


def _n_ways(folder: Path) -> int:
    """M of a run folder's config.json, or :data:`DEFAULT_WAYS` when it has none."""
    try:
        return int(read_config(folder).get("M", DEFAULT_WAYS))
    except (FileNotFoundError, ValueError, TypeError):
        return DEFAULT_WAYS


def _theta_figure(runs: Mapping[str, pd.DataFrame], title: str, window: int = 1, kind: str = "theta") -> Figure:
    """theta.png: one row per term active in any run, one column per run; a panel per
    (term, run) where the run has that term (the others are left out), each with its own y
    scale, x shared within a run's column. ``kind="phi"``: the same for the feedback terms'
    coefficients phi_s (phi.png)."""
    column, active, _, palette = _KINDS[kind]
    terms = sorted({r for df in runs.values() for r in active(df)})
    rows, cols = max(1, len(terms)), len(runs)
    fig = Figure(figsize=(max(6.4, 4.3 * cols), 1.0 + 1.45 * rows), layout="constrained")
    grid = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    colors = palette(terms)
    for j, (name, df) in enumerate(runs.items()):
        mine = active(df)
        used = [grid[i, j] for i, r in enumerate(terms) if r in mine]
        for i, r in enumerate(terms):
            ax = grid[i, j]
            if r not in mine:
                ax.set_visible(False)
                continue
            if ax is not used[0]:
                ax.sharex(used[0])
            _theta_panel(ax, df, r, colors[r], window, kind)
            if ax is not used[-1]:
                ax.tick_params(labelbottom=False)
        if used:
            t, e = _size(df)
            used[0].set_title(f"{name}: {t} trials, {e} episodes", fontsize="medium", pad=14)
            used[-1].set_xlabel("episode")
        else:
            grid[0, j].set_visible(True)
            grid[0, j].text(0.5, 0.5, f"{name}: no {column} values", ha="center", va="center",
                            transform=grid[0, j].transAxes)
    fig.suptitle(title, fontsize="medium")
    return fig


def figures_from_results(
    folders: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Sequence[str] | None = None,
    prefix: str = "",
    window: int = 10,
    dpi: int = 120,
) -> list[Path]:
    """Write the meta-training figures of one or more run folders as PNGs.

    Reads each folder's history.csv (and the number of ways M from its config.json, for
    the chance line; 5 when absent) and writes into ``out_dir``:
    ``{prefix}meta_accuracy.png`` (with the chance line 1/M), ``{prefix}meta_loss.png``,
    ``{prefix}theta.png`` (one panel per active term and run, each on its own scale),
    ``{prefix}alignment.png`` and ``{prefix}orthonormality.png`` (one panel per layer,
    runs compared within a panel, one legend below the panels), and, when a run had plastic
    feedback (``phi_s`` columns with values), ``{prefix}phi.png`` (one panel per plastic
    feedback term and run, like theta.png). Titles give the number of trials and episodes.
    ``labels`` name the runs (default: folder names).

    Returns the paths written.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("no run folders given")
    labels = list(labels) if labels is not None else _default_labels(folders)
    if len(labels) != len(folders) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per folder, got {labels} for {len(folders)}")
    runs = {name: read_history(f) for name, f in zip(labels, folders)}
    ways = sorted({_n_ways(f) for f in folders})
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
            fig, (ax,) = _grid(1, panel=(8.0, 4.2))
            plot_meta_curves(runs, column, ax=ax, window=window, chance=None)
            if column == "meta_accuracy":
                for m in ways:  # one line per distinct M among the runs (usually one)
                    add_chance_line(ax, chance_level(m))
                _legend(ax)
            ax.set_title(f"{title}: {desc}\n{band}, smoothed over {window} episodes",
                         fontsize="medium")
            save(fig, column)

        save(_theta_figure(runs, rf"Plasticity coefficients $\theta_r$, each on its own scale ({band})"), "theta")
        if any(active_feedback_terms(df) for df in runs.values()):
            save(_theta_figure(runs, rf"Feedback coefficients $\phi_s$, each on its own scale ({band})",
                               kind="phi"), "phi")

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
            _figure_legend(fig, axes)
            what = "Alignment angle" if name == "alignment" else "Orthonormality error"
            fig.suptitle(f"{what} per layer: {desc}\n{band}", fontsize="medium")
            save(fig, name)
    return written


def plot_sweep(table: pd.DataFrame, settings: Sequence[str], chance: float | None = None) -> Figure:
    """The summary figure of a sweep table (``sweep.csv`` of :func:`labkit.sweep.run_sweep`):
    final meta-accuracy with its 98% CI per cell, against the first setting of ``settings``
    (log axis when it is numeric and spans more than a decade), one line per combination of
    the others. ``chance``: a chance line (e.g. ``chance_level(M)``); None draws none."""
    settings = list(settings)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    df = table.copy()
    if not settings:
        df["_cell"] = "base"
        settings = ["_cell"]
    x_name, rest = settings[0], settings[1:]
    xs = df[x_name]
    numeric = pd.api.types.is_numeric_dtype(xs)
    if not numeric:
        order = list(dict.fromkeys(xs.astype(str)))
        df["_x"] = xs.astype(str).map({v: i for i, v in enumerate(order)})
    else:
        df["_x"] = xs.astype(float)
    groups = list(df.groupby(rest, sort=False)) if rest else [((), df)]
    colors = _colors(len(groups))
    for (key, g), color in zip(groups, colors):
        g = g.sort_values("_x")
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k}={v}" for k, v in zip(rest, key)) or "cells"
        y = g["meta_accuracy"].to_numpy(dtype=float)
        lo = y - g["ci_low"].to_numpy(dtype=float)
        hi = g["ci_high"].to_numpy(dtype=float) - y
        ax.errorbar(g["_x"], y, yerr=[lo, hi], marker="o", capsize=3, color=color, label=label)
    if numeric:
        pos = df["_x"][df["_x"] > 0]
        if len(pos) and (df["_x"] > 0).all() and pos.max() / pos.min() > 10:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(order)), order, rotation=20)
    if chance is not None:
        add_chance_line(ax, chance)
    ax.set_xlabel(x_name)
    ax.set_ylabel("final meta-accuracy (98% CI)")
    ax.set_title(f"sweep: {len(df)} cells")
    _legend(ax, **_OUTSIDE_RIGHT)
    return fig


def plot_accuracy_vs_K(table: pd.DataFrame, chance: float | None = None) -> Figure:
    """Accuracy against the number K of training images per class, one line per rule with its
    98% CI band, one panel per protocol (``table`` has columns ``protocol``, ``K``, ``rule``,
    ``accuracy``, ``ci_low``, ``ci_high``, e.g. ``results/beyond/scarce_table.csv``). K is on
    a log axis; ``chance`` (e.g. 0.2) draws the chance line."""
    titles = {"per_K": "meta-trained at each K", "from_K50": "meta-trained at K = 50"}
    protocols = sorted(dict.fromkeys(table["protocol"]), key=lambda p: (list(titles).index(p) if p in titles else 2, p))
    rules = list(dict.fromkeys(table["rule"]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(4.6 * len(protocols), 3.8), sharey=True,
                             constrained_layout=True, squeeze=False)
    colors = dict(zip(rules, _colors(len(rules))))
    for ax, protocol in zip(axes[0], protocols):
        for rule in rules:
            g = table[(table["protocol"] == protocol) & (table["rule"] == rule)].sort_values("K")
            if g.empty:
                continue
            ax.plot(g["K"], g["accuracy"], marker="o", color=colors[rule], label=rule)
            ax.fill_between(g["K"], g["ci_low"], g["ci_high"], color=colors[rule], alpha=0.2, linewidth=0)
        if chance is not None:
            add_chance_line(ax, chance)
        ax.set_xscale("log")
        ks = sorted(table["K"].unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K (training images per class)")
        ax.set_title(titles.get(protocol, protocol), fontsize="medium")
    axes[0][0].set_ylabel("accuracy on held-out classes (98% CI)")
    _figure_legend(fig, list(axes[0]), ncol=4)
    return fig


def plot_depth_study(table: pd.DataFrame, columns: Sequence[tuple[str, str]] | None = None) -> Figure:
    """Online learning against depth: one row of panels per initialisation scale, one column
    per measure, one line per rule (``table`` as ``results/beyond/deep_init.csv``: columns
    ``init_scale``, ``depth``, ``rule``, ``accuracy``, ``ci_low``, ``ci_high`` and the
    measures). ``columns``: (column, axis label) pairs; default accuracy, hidden-layer weight
    norm and the last hidden layer's effective rank. Accuracy has its 98% CI band; a diverged
    configuration (NaN) leaves a gap."""
    columns = list(columns or [("accuracy", "final accuracy (98% CI)"),
                               ("hidden_weight_norm", "mean hidden ||W_l||_F"),
                               ("last_hidden_rank", "effective rank, last hidden layer")])
    scales = sorted(table["init_scale"].unique())
    rules = list(dict.fromkeys(table["rule"]))
    colors = dict(zip(rules, _colors(len(rules))))
    fig, axes = plt.subplots(len(scales), len(columns), figsize=(4.2 * len(columns), 2.9 * len(scales)),
                             sharex=True, constrained_layout=True, squeeze=False)
    for row, scale in zip(axes, scales):
        for ax, (col, label) in zip(row, columns):
            for rule in rules:
                g = table[(table["init_scale"] == scale) & (table["rule"] == rule)].sort_values("depth")
                ax.plot(g["depth"], g[col], marker="o", color=colors[rule], label=rule)
                if col == "accuracy":
                    ax.fill_between(g["depth"], g["ci_low"], g["ci_high"], color=colors[rule], alpha=0.2,
                                    linewidth=0)
            if col == "accuracy":
                add_chance_line(ax, 0.1)
            elif col == "hidden_weight_norm":
                ax.set_yscale("log")  # diverging networks' norms run to 1e6 and beyond
            ax.set_title(f"init {scale:g}x Xavier: {label}", fontsize="small")
            depths = sorted(table["depth"].unique())
            ax.set_xticks(depths)
    for ax in axes[-1]:
        ax.set_xlabel("hidden layers (100 units each)")
    _figure_legend(fig, [ax for row in axes for ax in row], ncol=6)
    return fig


def plot_online_study_curves(results: Sequence[Mapping], depth: int) -> Figure:
    """Over one online pass, for the networks of ``depth`` hidden layers: accuracy, mean
    hidden-layer weight norm (log axis) and mean effective rank of the hidden activations (mean
    over the networks that did not diverge, with a 98% band), one row per initialisation
    scale, one line per rule (none for a rule whose networks all diverged).
    ``results``: the configurations of :func:`labkit.analysis.online_study`."""
    chosen = [r for r in results if r["depth"] == depth]
    if not chosen:
        raise ValueError(f"no configuration with {depth} hidden layers; have {sorted({r['depth'] for r in results})}")
    scales = sorted({r["init_scale"] for r in chosen})
    rules = list(dict.fromkeys(r["rule"] for r in chosen))
    colors = dict(zip(rules, _colors(len(rules))))
    measures = [("accuracy", "accuracy (held out)"), ("weight_norm", "mean hidden ||W_l||_F"),
                ("effective_rank", "mean effective rank, hidden")]
    fig, axes = plt.subplots(len(scales), 3, figsize=(12.6, 2.9 * len(scales)), sharex=True,
                             constrained_layout=True, squeeze=False)
    for row, scale in zip(axes, scales):
        for ax, (key, label) in zip(row, measures):
            for r in chosen:
                if r["init_scale"] != scale:
                    continue
                v = np.asarray(r[key], dtype=float).copy()
                v[np.asarray(r["diverged"], dtype=bool)] = np.nan  # a diverged network leaves the mean
                if not np.isfinite(v).any():
                    continue
                if key == "weight_norm":
                    v = v[..., :-1].mean(axis=-1)
                elif key == "effective_rank":
                    v = v.mean(axis=-1)
                curve_with_band(ax, np.asarray(r["steps"]), v, r["rule"], color=colors[r["rule"]], window=1)
            if key == "accuracy":
                add_chance_line(ax, 0.1)
            elif key == "weight_norm":
                ax.set_yscale("log")
            ax.set_xscale("symlog", linthresh=25)
            ax.set_title(f"{depth} hidden layers, init {scale:g}x: {label}", fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("samples seen (one pass)")
    _figure_legend(fig, [ax for row in axes for ax in row], ncol=6)
    return fig
