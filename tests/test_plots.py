"""Claims about labkit.plots: figures come out of results folders."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labkit.plots import (  # noqa: E402
    curve_with_band,
    figures_from_results,
    plot_alignment,
    plot_meta_curves,
    plot_online_curves,
    plot_orthonormality,
    plot_theta_trajectories,
)
from labkit.results import HistoryWriter, read_history  # noqa: E402

L = 3


def _synthetic_run(folder, n_trials=3, n_episodes=30, terms=(0, 2, 9), seed=0,
                   diverge=None):
    """A history.csv like meta-training writes; ``diverge=(trial, episode)`` stops one."""
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
            row.update({f"theta_{r}": 1e-3 * (1 if r == 0 else 0.1) * (1 + 0.01 * e)
                        + 1e-5 * rng.normal() for r in terms})
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
