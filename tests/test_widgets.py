"""labkit.widgets (the playground of notebook 04): terms and pathways come from their tables.

Nothing here lists terms or pathways: every expectation is read from ``labkit.terms.TERMS``
and ``labkit.pathways``, so a term or pathway added there is checked without editing this file.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labkit import pathways, widgets  # noqa: E402
from labkit.plots import chance_level  # noqa: E402
from labkit.terms import TERMS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NEW_PATHWAYS = ("usf", "frsf", "drtp")


@pytest.fixture(scope="module")
def controls():
    return widgets.build_controls(None, n_samples=50)


def test_one_slider_per_term_of_the_table_with_its_range_and_name(controls):
    assert len(controls.thetas) == len(TERMS)
    for slider, t in zip(controls.thetas, TERMS):
        assert slider.description == f"θ{t.index} {t.name}"
        lo, hi = t.slider
        # apply() may widen a range to fit a preset's value, never narrow it
        assert slider.min <= lo and slider.max >= hi
    fresh = widgets.build_controls(None, preset="FA (lr only)")  # its theta_0 = 0.01 fits every range
    assert [(s.min, s.max) for s in fresh.thetas] == [tuple(map(float, t.slider)) for t in TERMS]
    assert widgets.slider_specs() == [(t.index, t.name, *map(float, t.slider)) for t in TERMS]
    assert controls.values()["theta"].shape == (len(TERMS),)


def test_feedback_menu_offers_every_registered_pathway(controls):
    names = pathways.names()
    assert set(NEW_PATHWAYS) <= set(names)
    assert [v for _, v in controls.feedback.options] == list(names)
    assert [lab for lab, _ in controls.feedback.options] == [f"{pathways.get(k).label} ({k})" for k in names]


@pytest.mark.parametrize("name", pathways.names())
def test_a_preset_may_use_any_registered_pathway(controls, name):
    p = widgets.Preset("test", name, tuple([0.01] + [0.0] * (len(TERMS) - 1)), "test")
    controls.apply(p)
    assert controls.feedback.value == name and controls.values()["feedback"] == name


def test_a_preset_rejects_an_unregistered_pathway():
    with pytest.raises(ValueError, match="unknown feedback pathway"):
        widgets.Preset("test", "sign-symmetry", (0.01,), "test")
    assert all(fb in pathways.names() for _, fb in widgets.PRESET_SOURCES.values())


@pytest.mark.parametrize("name", NEW_PATHWAYS)
def test_run_and_plot_with_the_new_pathways(name):
    fig, curves = widgets.run_and_plot(name, widgets.theta_vector({0: 0.01}), 20, trials=1, every=10,
                                       references=False, label="lr only")
    (c,) = curves.values()
    assert c["accuracy"].shape == (1, 3) and np.isfinite(c["accuracy"]).all()
    assert np.isfinite(c["alpha"]).all()
    ax_acc = fig.axes[0]
    assert f"({name})" in fig.axes[1].get_title()
    chance = [ln for ln in ax_acc.get_lines() if np.allclose(ln.get_ydata(), chance_level(c["n_classes"]))]
    assert len(chance) == 1 and chance[0].get_label() == "chance (10%)"


def test_run_and_plot_references_and_legends_outside_the_curves():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, curves = widgets.run_and_plot("usf", widgets.theta_vector({0: 0.01, 2: -0.03}), 20, trials=1, every=10)
    assert list(curves) == ["your rule (usf)", *(f"{n}, theta_0 only" for _, n in widgets.REFERENCES)]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    for ax in fig.axes:
        leg = ax.get_legend()
        assert leg is not None
        assert not any(leg.get_window_extent(r).overlaps(other.get_window_extent(r)) for other in fig.axes)


def test_no_hard_coded_list_of_pathways_in_the_playground_files():
    """Pathway menus and checks read the registry; a literal list of the paper's three is a regression."""
    pattern = re.compile(r"""["'](bp|fa|dfa)["']\s*,\s*["'](bp|fa|dfa)["']\s*,\s*["'](bp|fa|dfa)["']""")
    files = ["labkit/plots.py", "labkit/widgets.py", "labkit/tutorial.py", "notebooks/04_playground.py"]
    found = [f for f in files if pattern.search((ROOT / f).read_text())]
    assert not found, f"hard-coded pathway lists in {found}"
