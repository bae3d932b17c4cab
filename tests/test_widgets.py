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


# ------------------------------------------------------------------ plastic feedback (phi)


def test_one_phi_slider_per_feedback_term_all_zero_by_default(controls):
    from labkit.feedback_terms import FEEDBACK_TERMS

    assert len(controls.phis) == len(FEEDBACK_TERMS)
    for slider, t in zip(controls.phis, FEEDBACK_TERMS):
        assert slider.description == f"φ{t.index} {t.name}"
        assert (slider.min, slider.max) == tuple(map(float, t.slider))
    assert widgets.phi_slider_specs() == [(t.index, t.name, *map(float, t.slider)) for t in FEEDBACK_TERMS]
    # every preset but the Kolen-Pollack one keeps B fixed: its phi is 0, as are the sliders
    table = widgets.presets(None)
    for name, p in table.items():
        assert (any(p.phi) if name in widgets.FALLBACK_PHI else not any(p.phi)), name
    fresh = widgets.build_controls(None, n_samples=50)
    assert fresh.values()["phi"].tolist() == [0.0] * len(FEEDBACK_TERMS)
    assert list(fresh.values()) == ["feedback", "theta", "n_samples", "phi", "label"]
    assert widgets.Preset("test", "fa", (0.01,) + (0.0,) * (len(TERMS) - 1), "test").phi == (0.0,) * len(FEEDBACK_TERMS)


def test_zero_phi_leaves_the_run_and_the_figure_as_they_were():
    theta = widgets.theta_vector({0: 0.01, 2: -0.03})
    fig0, c0 = widgets.run_and_plot("fa", theta, 20, trials=1, every=10)
    fig1, c1 = widgets.run_and_plot("fa", theta, 20, trials=1, every=10, phi=np.zeros(4))
    assert list(c0) == list(c1) == ["your rule (fa)", *(f"{n}, theta_0 only" for _, n in widgets.REFERENCES)]
    for k in c0:
        assert "weight_angle" not in c1[k]
        assert np.array_equal(c0[k]["accuracy"], c1[k]["accuracy"]) and np.array_equal(c0[k]["alpha"], c1[k]["alpha"])
    assert len(fig1.axes) == len(fig0.axes) == 2
    assert fig1._suptitle.get_text() == fig0._suptitle.get_text()
    assert "phi" not in fig1._suptitle.get_text()


def test_the_kolen_pollack_slider_makes_B_follow_W():
    """phi_0 (Kolen-Pollack) > 0 shrinks the angle between W_l and B_l^T on a short run; with
    phi = 0 it stays near 90 degrees. The figure gets a third panel with those angles."""
    from labkit.tutorial import online_learning

    c = widgets.build_controls(None, preset="FA (lr only)", n_samples=200)
    c.phis[0].value = c.phis[0].max  # the Kolen-Pollack term at the top of its range
    v = c.values()
    assert v["label"] == "custom rule" and v["phi"][0] > 0
    fig, curves = widgets.run_and_plot(**v, trials=1, every=100, references=False)
    (name, kp), = curves.items()
    assert name == "custom rule (fa, plastic B)"
    fixed = online_learning("fa", v["theta"], 200, trials=1, every=100, phi=np.zeros(4))
    assert np.array_equal(kp["weight_angle"][:, 0], fixed["weight_angle"][:, 0])  # same W and B at the start
    kp_end, fixed_end = kp["weight_angle"][0, -1], fixed["weight_angle"][0, -1]
    assert (fixed_end > 80).all(), fixed_end
    assert kp_end.mean() < fixed_end.mean() - 10 and kp_end[0] < 60, (kp_end, fixed_end)
    assert len(fig.axes) == 3 and "W" in fig.axes[2].get_ylabel()
    assert len(fig.axes[2].get_legend().get_texts()) == kp["weight_angle"].shape[2]
    assert r"$\phi_{0}$" in fig._suptitle.get_text()


@pytest.mark.parametrize("name", [k for k in pathways.names() if k != "fa"])
def test_phi_with_a_pathway_without_free_feedback_matrices_is_ignored_with_a_note(name):
    from labkit.feedback import plastic_feedback_allowed

    if plastic_feedback_allowed(name):
        pytest.skip(f"{name} takes plastic feedback")
    fig, curves = widgets.run_and_plot(name, widgets.theta_vector({0: 0.01}), 20, trials=1, every=10,
                                       references=False, phi=[0.01, 0.0, 0.0, 0.0])
    (c,) = curves.values()
    assert "weight_angle" not in c and len(fig.axes) == 2
    title = fig._suptitle.get_text()
    assert f"phi is ignored with the '{name}' pathway" in title and "feedback='fa'" in title
    # the controls disable the phi sliders and say why; back on fa they are live again
    ctl = widgets.build_controls(None, n_samples=50)
    ctl.feedback.value = name
    assert all(s.disabled for s in ctl.phis) and "Not available" in ctl.phi_note.value and name in ctl.phi_note.value
    ctl.feedback.value = "fa"
    assert not any(s.disabled for s in ctl.phis) and "Not available" not in ctl.phi_note.value


def test_the_kolen_pollack_preset_and_a_preset_that_cannot_learn_its_feedback():
    table = widgets.presets(None)
    kp = table["FA + Kolen-Pollack feedback"]
    assert kp.feedback == "fa" and kp.phi[0] > 0 and kp.source.startswith("fallback")
    c = widgets.build_controls(None, preset="FA + Kolen-Pollack feedback", n_samples=50)
    v = c.values()
    assert v["label"] == "FA + Kolen-Pollack feedback, hand-set" and v["phi"].tolist() == list(kp.phi)
    c.apply(table["BP"])  # switching presets resets phi (the playground applies a chosen preset)
    assert c.values()["phi"].tolist() == [0.0] * len(kp.phi) and all(s.disabled for s in c.phis)
    with pytest.raises(ValueError, match="refused for pathway 'bp'"):
        widgets.Preset("test", "bp", (0.01,) + (0.0,) * (len(TERMS) - 1), "test", (0.01, 0.0, 0.0, 0.0))


def test_online_learning_refuses_plastic_feedback_for_other_pathways_with_a_clear_error():
    from labkit.tutorial import online_learning

    with pytest.raises(ValueError, match="refused for pathway 'dfa'.*feedback='fa'"):
        online_learning("dfa", widgets.theta_vector({0: 0.01}), 20, trials=1, every=10, phi=[0.01, 0, 0, 0])
    with pytest.raises(ValueError, match="phi needs 4 numbers"):
        online_learning("fa", widgets.theta_vector({0: 0.01}), 20, trials=1, every=10, phi=[0.01])


def test_the_playground_prints_why_a_setting_cannot_run(tmp_path, capsys):
    """A setting that cannot run shows its message in the output area, not a traceback (here:
    MNIST is not on disk; outside a kernel the output area is stdout)."""
    controls = widgets.build_controls(None, n_samples=50)
    widgets.playground(controls, trials=1, every=10, dataset="mnist", data_root=str(tmp_path))
    controls.n_samples.value = 100  # any change redraws
    assert "cannot run this setting" in capsys.readouterr().out
