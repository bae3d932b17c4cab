"""Claims about labkit.plots: figures come out of results folders."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from labkit import plots  # noqa: E402
from labkit.plots import (  # noqa: E402
    add_chance_line,
    chance_level,
    curve_with_band,
    figures_from_results,
    plot_alignment,
    plot_meta_curves,
    plot_online_curves,
    plot_orthonormality,
    plot_theta_panels,
    plot_theta_trajectories,
)
from labkit.results import HistoryWriter, read_history, write_config  # noqa: E402
from labkit.terms import TERMS  # noqa: E402

L = 3


def _synthetic_run(folder, n_trials=3, n_episodes=30, terms=(0, 2, 9), seed=0,
                   diverge=None, scales=None):
    """A history.csv like meta-training writes; ``diverge=(trial, episode)`` stops one;
    ``scales`` {r: size} sets the magnitude of theta_r (default 1e-3 for r = 0, else 1e-4)."""
    rng = np.random.default_rng(seed)
    w = HistoryWriter(folder, n_layers=L)
    for e in range(1, n_episodes + 1):
        rows = []
        for t in range(n_trials):
            if diverge and t == diverge[0] and e > diverge[1]:
                continue
            row = {"trial": t, "episode": e,
                   "meta_loss": 1.6 - 0.02 * e + 0.05 * rng.normal(),
                   "meta_accuracy": 0.2 + 0.01 * e + 0.02 * rng.normal(),
                   "guarded": "clip" if e == 3 else "",
                   "diverged": int(bool(diverge) and (t, e) == tuple(diverge))}
            size = {r: (scales or {}).get(r, 1e-3 if r == 0 else 1e-4) for r in terms}
            row.update({f"theta_{r}": size[r] * (1 + 0.01 * e + 0.01 * rng.normal()) for r in terms})
            row.update({f"alpha_{l}": 80.0 - e + rng.normal() for l in range(1, L)})
            row.update({f"weight_angle_{l}": 89.0 + rng.normal() for l in range(1, L + 1)})
            row.update({f"ortho_{l}": 10.0 / e + 0.1 * rng.random() for l in range(1, L + 1)})
            rows.append(row)
        w.append(rows)
    return folder


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_figures_from_results_writes_nonempty_pngs_for_two_runs(tmp_path):
    a = _synthetic_run(tmp_path / "FA", seed=0, terms=(0,))
    b = _synthetic_run(tmp_path / "bio", seed=1, diverge=(2, 20))
    paths = figures_from_results([a, b], tmp_path / "figs", prefix="x_")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"x_{n}.png" for n in
                           ("meta_accuracy", "meta_loss", "theta", "alignment", "orthonormality"))
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_figures_from_results_handles_runs_of_different_lengths_and_one_trial(tmp_path):
    a = _synthetic_run(tmp_path / "a", n_trials=1, n_episodes=12)
    b = _synthetic_run(tmp_path / "b", n_trials=2, n_episodes=25)
    paths = figures_from_results([a, b], tmp_path / "figs", labels=["one", "two"])
    assert len(paths) == 5 and all(p.stat().st_size > 0 for p in paths)


def test_figures_from_results_on_missing_history_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="history.csv"):
        figures_from_results([tmp_path / "empty"], tmp_path / "figs")


def test_meta_curve_legend_counts_trials_and_mean_drops_a_trial_after_it_diverged(tmp_path):
    df = read_history(_synthetic_run(tmp_path / "r", diverge=(2, 20)))
    ax = plot_meta_curves({"bio": df}, window=1)
    assert ax.get_legend().get_texts()[0].get_text() == "bio (3 trials)"
    y = ax.get_lines()[0].get_ydata()
    assert len(y) == 30 and np.isfinite(y).all()
    # after trial 2 stopped, the mean is that of trials 0 and 1 only
    wide = df[df.trial < 2].pivot(index="trial", columns="episode", values="meta_accuracy")
    np.testing.assert_allclose(y[20:], wide.to_numpy().mean(axis=0)[20:])


def test_single_trial_draws_a_line_without_band():
    ax = curve_with_band(None, np.arange(5), np.ones((1, 5)), "one", window=1)
    assert len(ax.get_lines()) == 1 and not ax.collections
    ax = curve_with_band(None, np.arange(5), np.random.default_rng(0).random((4, 5)), "four")
    assert len(ax.collections) == 1


def test_theta_plot_has_one_line_per_active_term_with_names(tmp_path):
    df = read_history(_synthetic_run(tmp_path / "r", terms=(0, 2, 9)))
    ax = plot_theta_trajectories(df)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 3
    assert "eHebb" in labels[1] and "Oja" in labels[2] and "pseudo-grad" in labels[0]


def test_alignment_and_orthonormality_plot_one_curve_per_layer_and_run(tmp_path):
    df = read_history(_synthetic_run(tmp_path / "r"))
    ax = plot_alignment({"a": df, "b": df})
    assert len(ax.get_lines()) == 2 * (L - 1)
    ax = plot_alignment(df, layers=[2])
    assert len(ax.get_lines()) == 1
    ax = plot_orthonormality(df)
    assert len(ax.get_lines()) == L and ax.get_yscale() == "log"


def test_online_curves_plot_mean_and_band_per_label():
    steps = np.arange(0, 100, 10)
    vals = np.random.default_rng(0).random((5, 10))
    fig, ax = plt.subplots()
    out = plot_online_curves({"FA": (steps, vals), "BP": (steps, vals + 0.2)}, ax=ax)
    assert out is ax and len(ax.get_lines()) == 2 and len(ax.collections) == 2


# ------------------------------------------------------------------ chance, legends, theta panels


def _chance_lines(ax, level):
    return [ln for ln in ax.get_lines()
            if np.allclose(ln.get_ydata(), level) and ln.get_linestyle() == "--"]


def _assert_legends_outside(fig):
    """Every legend (of an axes or of the figure) lies outside every visible axes' data area."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # constrained layout and legend positions are final after a draw
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, "no legend drawn"
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer)), \
                    f"legend {[t.get_text() for t in leg.get_texts()]} overlaps the axes {ax.get_title()!r}"


@pytest.fixture
def captured(monkeypatch):
    """The figures figures_from_results saves, by file name."""
    from matplotlib.figure import Figure

    out = {}
    save = Figure.savefig

    def spy(self, path, *a, **kw):
        out[getattr(path, "name", str(path))] = self
        return save(self, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    return out


def test_chance_level_and_line():
    assert chance_level() == 0.2 and chance_level(5) == 0.2 and chance_level(10) == 0.1
    with pytest.raises(ValueError):
        chance_level(0)
    _, ax = plt.subplots()
    line = add_chance_line(ax)
    assert line.get_label() == "chance (20%)" and line.get_linestyle() == "--"
    assert np.allclose(line.get_ydata(), 0.2) and line.get_linewidth() < 1.5
    assert add_chance_line(ax, chance_level(10)).get_label() == "chance (10%)"


def test_meta_accuracy_has_a_chance_line_at_one_fifth_and_the_loss_none(tmp_path):
    df = read_history(_synthetic_run(tmp_path / "r"))
    ax = plot_meta_curves({"bio": df}, "meta_accuracy", window=1)
    assert len(_chance_lines(ax, 0.2)) == 1
    assert "chance (20%)" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax = plot_meta_curves({"bio": df}, "meta_accuracy", window=1, chance=chance_level(4))
    assert _chance_lines(ax, 0.25) and not _chance_lines(ax, 0.2)
    ax = plot_meta_curves({"bio": df}, "meta_loss", window=1)
    assert not _chance_lines(ax, 0.2)


def test_online_accuracy_gets_the_chance_line_it_is_given():
    steps, vals = np.arange(0, 100, 10), np.random.default_rng(0).random((3, 10))
    ax = plot_online_curves({"FA": (steps, vals)}, chance=chance_level(10))
    assert len(_chance_lines(ax, 0.1)) == 1
    ax = plot_online_curves({"alpha": (steps, 90 * vals)}, ylabel="angle")
    assert not [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]


def test_legends_sit_outside_the_data_area(tmp_path):
    df = read_history(_synthetic_run(tmp_path / "r", terms=tuple(range(len(TERMS)))))
    for draw in (lambda ax: plot_meta_curves({"a": df, "b": df}, ax=ax, window=1),
                 lambda ax: plot_theta_trajectories(df, ax=ax),
                 lambda ax: plot_alignment({"a": df, "b": df}, ax=ax),
                 lambda ax: plot_online_curves({"FA": (np.arange(5), np.ones((2, 5)))}, ax=ax, chance=0.1)):
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        draw(ax)
        _assert_legends_outside(fig)


def test_figures_from_results_chance_from_config_and_legends_outside(tmp_path, captured):
    a = _synthetic_run(tmp_path / "five", seed=0, terms=(0,))
    b = _synthetic_run(tmp_path / "four", seed=1)
    write_config(b, {"M": 4, "K": 5, "Q": 2})  # "five" has no config.json: M = 5 is assumed
    figures_from_results([a, b], tmp_path / "figs")
    ax = captured["meta_accuracy.png"].axes[0]
    assert len(_chance_lines(ax, 0.2)) == 1 and len(_chance_lines(ax, 0.25)) == 1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chance (20%)" in labels and "chance (25%)" in labels
    assert not _chance_lines(captured["meta_loss.png"].axes[0], 0.2)
    for name in ("meta_accuracy.png", "meta_loss.png", "alignment.png", "orthonormality.png"):
        _assert_legends_outside(captured[name])


def test_theta_figure_has_one_panel_per_active_term_each_on_its_own_scale(tmp_path, captured):
    a = _synthetic_run(tmp_path / "FA", terms=(0,))
    b = _synthetic_run(tmp_path / "pool", terms=(0, 2, 5, 9), scales={0: 1e-2, 2: -3e-2, 5: 1e-6, 9: 5e-3})
    figures_from_results([a, b], tmp_path / "figs")
    fig = captured["theta.png"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 1 + 4
    labels = sorted(ax.get_ylabel() for ax in panels)
    assert labels == sorted([plots.theta_label(0)] * 2 + [plots.theta_label(r) for r in (2, 5, 9)])
    tiny = next(ax for ax in panels if ax.get_ylabel() == plots.theta_label(5))
    assert abs(tiny.get_ylim()[1]) < 1e-4  # theta_5 is not squashed by theta_0 and theta_2
    assert {ax.get_title().split(":")[0] for ax in panels if ax.get_title()} == {"FA", "pool"}

    axes = plot_theta_panels(read_history(b))
    assert len(axes) == 4 and len({ax.get_ylim() for ax in axes}) == 4
    assert [ax.get_ylabel() for ax in axes] == [plots.theta_label(r) for r in (0, 2, 5, 9)]


def test_single_axes_theta_plot_uses_symlog_when_terms_span_decades(tmp_path):
    wide = read_history(_synthetic_run(tmp_path / "w", terms=(0, 5), scales={0: 1e-2, 5: 1e-6}))
    assert plot_theta_trajectories(wide).get_yscale() == "symlog"
    narrow = read_history(_synthetic_run(tmp_path / "n", terms=(0, 2), scales={0: 1e-2, 2: -3e-2}))
    assert plot_theta_trajectories(narrow).get_yscale() == "linear"
    assert plot_theta_trajectories(wide, yscale="linear").get_yscale() == "linear"


def test_plots_label_every_theta_column_from_the_term_table(tmp_path):
    """Labels come from labkit.terms.TERMS: every term of the table (however many) is named."""
    assert plots.TERM_NAMES == {t.index: t.short for t in TERMS}
    df = read_history(_synthetic_run(tmp_path / "all", terms=tuple(t.index for t in TERMS)))
    assert plots.active_terms(df) == [t.index for t in TERMS]
    labels = [t.get_text() for t in plot_theta_trajectories(df).get_legend().get_texts()]
    assert labels == [rf"$\theta_{{{t.index}}}$ {t.short}" for t in TERMS]
    assert [ax.get_ylabel() for ax in plot_theta_panels(df)] == labels
    # a theta column beyond the table (an older or newer results file) is still plotted
    df[f"theta_{len(TERMS)}"] = 1e-3
    assert plots.active_terms(df)[-1] == len(TERMS)
    assert plots.theta_label(len(TERMS)) == rf"$\theta_{{{len(TERMS)}}}$"


# ---------------------------------------------------------------- the follow-up's experiments


def test_accuracy_vs_K_has_a_panel_per_protocol_a_line_and_band_per_rule_and_the_chance_line():
    rows = [dict(protocol=p, K=k, rule=r, accuracy=a, ci_low=a - 0.05, ci_high=a + 0.05)
            for p in ("per_K", "from_K50") for k in (1, 5, 50) for r, a in (("BP", 0.5 + k / 200), ("bio", 0.4 + k / 100))]
    fig = plots.plot_accuracy_vs_K(pd.DataFrame(rows), chance=0.2)
    axes = fig.axes
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["meta-trained at each K", "meta-trained at K = 50"]
    for ax in axes:
        labels = [l.get_label() for l in ax.get_lines()]
        assert "chance (20%)" in labels
        assert sum(1 for l in ax.get_lines() if list(l.get_xdata()) == [1, 5, 50]) == 2
        assert len(ax.collections) == 2 and ax.get_xscale() == "log"
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"BP", "bio", "chance (20%)"}
    plt.close(fig)


def test_depth_study_draws_a_row_per_init_scale_and_curves_over_the_pass():
    from labkit.analysis import online_study, online_study_table

    rules = {"FA": ("fa", np.eye(10)[[0]] * 0.01), "BP": ("bp", np.eye(10)[[0]] * 0.01)}
    runs = online_study(rules, depths=(2, 3), init_scales=(0.3, 3.0), width=6, trials=2, steps=(0, 10), n_samples=20)
    fig = plots.plot_depth_study(online_study_table(runs))
    assert len(fig.axes) == 2 * 3
    assert fig.axes[0].get_title().startswith("init 0.3x") and fig.axes[3].get_title().startswith("init 3x")
    assert [list(l.get_xdata()) for l in fig.axes[0].get_lines() if l.get_label() == "FA"] == [[2, 3]]
    plt.close(fig)
    fig = plots.plot_online_study_curves(runs, depth=3)
    assert len(fig.axes) == 2 * 3 and "3 hidden layers" in fig.axes[0].get_title()
    assert [list(l.get_xdata()) for l in fig.axes[0].get_lines() if l.get_label() == "BP"] == [[0, 10, 20]]
    plt.close(fig)
    with pytest.raises(ValueError, match="no configuration with 5 hidden layers"):
        plots.plot_online_study_curves(runs, depth=5)
