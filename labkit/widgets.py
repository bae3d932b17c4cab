"""The playground of notebook 04: rule presets, ipywidgets controls and one run-and-plot function.

Everything the widgets do goes through ordinary functions, so a notebook can call them
headless (papermill, tests) and get the same figure the live controls show:

* :func:`presets` -> named rules ("FA (lr only)", "discovered bio", "eHebb", "Oja", "BP"),
  read from committed results folders when present, else documented fallback values;
* :func:`run_and_plot` -> the online learning curve of one rule (as in Fig. 1 of the paper:
  a fresh network sees a stream of images once, batch size 1, and is tested on held-out
  images every few samples; computed by :func:`labkit.tutorial.online_learning`, which also
  serves notebook 01), with FA and BP references at the same theta_0, and the
  teaching-signal angles alpha_l, as one matplotlib figure;
* :func:`build_controls` / :func:`playground` -> the ipywidgets front end that calls
  :func:`run_and_plot` whenever a control changes. Building them needs no frontend.

Nothing here lists terms or pathways: the sliders are one per row of
:data:`labkit.terms.TERMS` (its ``name`` and ``slider`` range), the feedback menu is every
pathway registered in :mod:`labkit.pathways` at the time the controls are built (labelled
"<label> (<name>)"), so a new term or pathway shows up without editing this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import pathways
from .terms import TERMS
from .tutorial import online_learning, theta_vector  # noqa: F401  (theta_vector: part of this module's API)

#: The reference curves drawn next to the user's rule: (pathway, legend name), each with
#: theta_0 alone at the user's theta_0 (the paper's comparison of FA with backprop).
REFERENCES: tuple[tuple[str, str], ...] = (("fa", "FA"), ("bp", "BP"))

#: Fallback coefficients (theta_r by term) used when a preset's results folder is absent.
#: Hand-set, NOT meta-learned: a small grid on the digits stream (default network, FA,
#: 1000 samples, 3 trials) gave test accuracy after 1000 samples of ~0.27 for FA
#: (theta_0 = 0.01), ~0.71 for eHebb, ~0.64 for Oja and ~0.77 for bio. Note the sign:
#: F^2 = -e_l e_{l-1}^T, so a NEGATIVE theta_2 moves W_l towards B_l^T.
FALLBACK_THETA: dict[str, dict[int, float]] = {
    "FA (lr only)": {0: 0.01},
    "discovered bio": {0: 0.01, 2: -0.03, 9: 0.003},
    "eHebb": {0: 0.01, 2: -0.03},
    "Oja": {0: 0.01, 9: 0.003},
    "BP": {0: 0.01},
}
#: Results folder (under the results directory) and feedback pathway of each preset (any
#: registered pathway, see ``labkit.pathways.names()``).
PRESET_SOURCES: dict[str, tuple[str, str]] = {
    "FA (lr only)": ("fa_lr", "fa"),
    "discovered bio": ("bio", "fa"),
    "eHebb": ("ehebb", "fa"),
    "Oja": ("oja", "fa"),
    "BP": ("bp_lr", "bp"),
}
DEFAULT_PRESET = "discovered bio"


@dataclass(frozen=True)
class Preset:
    """A named rule: feedback pathway (any registered one), one coefficient per term of
    :data:`labkit.terms.TERMS`, and where they come from."""

    name: str
    feedback: str
    theta: tuple[float, ...]  # one per term (N_TERMS), zeros for unused terms
    source: str  # "mean of 4 meta-trained trials in ../results/bio" or "fallback (hand-set, ...)"

    def __post_init__(self) -> None:
        pathways.get(self.feedback)  # a ValueError naming the registered pathways otherwise


def feedback_options() -> list[tuple[str, str]]:
    """The feedback menu: ``("<label> (<name>)", name)`` for every registered pathway, in
    the registry's order (``labkit.pathways.names()``: bp, fa, dfa first)."""
    return [(f"{pathways.get(k).label} ({k})", k) for k in pathways.names()]


def slider_specs() -> list[tuple[int, str, float, float]]:
    """``(index, name, min, max)`` of each theta_r slider, from :data:`labkit.terms.TERMS`
    (``Term.slider``: theta_0, the learning rate, is non-negative; the other ranges are
    symmetric around 0 and wide enough to reach divergence on the digits stream)."""
    return [(t.index, t.name, float(t.slider[0]), float(t.slider[1])) for t in TERMS]


def presets(results_dir: str | Path | None = "../results") -> dict[str, Preset]:
    """The playground's presets, by name.

    A preset takes the mean final theta over the non-diverged trials of its results folder
    (``results_dir/<folder>/theta.json``, see :data:`PRESET_SOURCES`) when it exists, else
    the fallback of :data:`FALLBACK_THETA`. ``results_dir=None`` uses the fallbacks only.
    """
    from .results import read_theta

    out: dict[str, Preset] = {}
    for name, (folder_name, feedback) in PRESET_SOURCES.items():
        folder = Path(results_dir) / folder_name if results_dir is not None else None
        theta, source = theta_vector(FALLBACK_THETA[name]), "fallback (hand-set, not meta-learned)"
        if folder is not None and (folder / "theta.json").is_file():
            d = read_theta(folder)
            mean = {int(k.split("_")[1]): v for k, v in d["mean"].items()}
            if mean and all(math.isfinite(v) for v in mean.values()):
                theta = theta_vector(mean)
                source = f"mean of {d.get('n_trials_used', '?')} meta-trained trials in {folder}"
        out[name] = Preset(name, feedback, tuple(float(v) for v in theta), source)
    return out


# ----------------------------------------------------------------------------- computing


def _describe_theta(theta: np.ndarray) -> str:
    return ", ".join(rf"$\theta_{{{r}}}$={v:.2g}" for r, v in enumerate(theta) if v != 0) or "all zero"


def run_and_plot(
    feedback: str,
    theta: Sequence[float] | np.ndarray,
    n_samples: int,
    trials: int = 3,
    every: int | None = None,
    references: bool = True,
    dataset: str = "digits",
    data_root: str | None = None,
    seed: int = 0,
    label: str = "your rule",
):
    """Run :func:`labkit.tutorial.online_learning` for the chosen rule and plot it; returns ``(fig, curves)``.

    ``feedback`` is any registered pathway (``labkit.pathways.names()``); ``theta`` one
    coefficient per term of :data:`labkit.terms.TERMS`.
    Left: test accuracy against training samples (mean over trials, 98% bootstrap band), with
    the pathways of :data:`REFERENCES` (FA and BP) using theta_0 alone at the same theta_0 as
    references (``references=True``) and the chance line 1/n_classes of the stream (10% for
    digits). Right: teaching-signal angles alpha_l to backprop, per hidden layer, for the
    chosen rule. Legends sit right of each panel, outside the curves.
    ``every`` defaults to n_samples // 20 (at least 10). ``curves`` maps each curve's label to
    the :func:`~labkit.tutorial.online_learning` result. The figure is closed in pyplot
    (display it yourself), so calling this repeatedly does not pile up figures.
    """
    import matplotlib.pyplot as plt

    from .plots import chance_level, plot_online_curves

    theta = theta_vector(theta)
    every = every or max(10, int(n_samples) // 20)
    kw = dict(trials=trials, every=every, dataset=dataset, data_root=data_root, seed=seed)
    curves = {f"{label} ({feedback})": online_learning(feedback, theta, n_samples, **kw)}
    if references:
        lr_only = theta_vector({0: theta[0]})
        for fb, name in REFERENCES:
            if fb != feedback or not np.array_equal(theta, lr_only):
                curves[f"{name}, theta_0 only"] = online_learning(fb, lr_only, n_samples, **kw)
    main = next(iter(curves.values()))

    fig, (ax_acc, ax_alpha) = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    plot_online_curves({k.replace("theta_0", r"$\theta_0$"): (c["steps"], c["accuracy"]) for k, c in curves.items()},
                       ax=ax_acc, chance=chance_level(main["n_classes"]))
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("test accuracy during online learning", fontsize="medium")
    alpha = main["alpha"]  # (T, S, L-1)
    plot_online_curves({rf"$\alpha_{{{l + 1}}}$": (main["steps"], alpha[:, :, l]) for l in range(alpha.shape[2])},
                       ax=ax_alpha, ylabel="alignment angle to backprop (deg)")
    ax_alpha.set_ylim(0, 180)
    ax_alpha.set_title(f"teaching-signal angles of {label} ({feedback})", fontsize="medium")
    n_div = int(main["diverged"].sum())
    fig.suptitle(
        f"{dataset}, one pass of {main['n_samples']} samples, batch size 1, {trials} trials (mean, 98% band); "
        f"{label}: {_describe_theta(theta)}" + (f"  [{n_div} of {trials} trials DIVERGED]" if n_div else ""),
        fontsize="medium",
    )
    plt.close(fig)
    return fig, curves


# ----------------------------------------------------------------------------- widgets


@dataclass
class Controls:
    """The playground's ipywidgets: preset, feedback, one slider per theta_r, samples."""

    preset: Any  # ipywidgets.Dropdown whose values are Preset objects
    feedback: Any  # ipywidgets.Dropdown over every registered pathway (feedback_options())
    thetas: list  # one ipywidgets.FloatSlider per term of labkit.terms.TERMS
    n_samples: Any  # ipywidgets.IntSlider
    source: Any  # ipywidgets.HTML saying where the preset's values come from

    def values(self) -> dict[str, Any]:
        """Current ``feedback``, ``theta`` (one per term), ``n_samples`` and ``label`` (the preset's name, marked
        ", hand-set" for a fallback, while the controls still match it; else "custom rule"): keyword
        arguments of :func:`run_and_plot`."""
        theta = np.array([s.value for s in self.thetas], dtype=float)
        p = self.preset.value
        same = p.feedback == self.feedback.value and np.allclose(theta, p.theta, rtol=1e-6, atol=0.0)
        return {
            "feedback": self.feedback.value,
            "theta": theta,
            "n_samples": int(self.n_samples.value),
            "label": (p.name + (", hand-set" if p.source.startswith("fallback") else "")) if same else "custom rule",
        }

    def apply(self, preset: Preset) -> None:
        """Set feedback and sliders to a preset (widening a slider whose range is too small)."""
        self.feedback.value = preset.feedback
        for slider, v in zip(self.thetas, preset.theta):
            if v < slider.min:
                slider.min = v
            if v > slider.max:
                slider.max = v
            slider.value = v
        self.source.value = f"<small>{preset.name}: {preset.source}</small>"


def build_controls(
    results_dir: str | Path | None = "../results",
    preset: str = DEFAULT_PRESET,
    n_samples: int = 600,
    max_samples: int = 1500,
) -> Controls:
    """Create the controls, set to ``preset``. Works without a frontend (nothing is displayed)."""
    import ipywidgets as w

    table = presets(results_dir)
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(table)}")
    style = {"description_width": "initial"}
    sliders = [
        w.FloatSlider(value=0.0, min=lo, max=hi, step=(hi - lo) / 400, description=f"θ{r} {name}",
                      readout_format=".2e", continuous_update=False, style=style, layout=w.Layout(width="460px"))
        for r, name, lo, hi in slider_specs()
    ]
    controls = Controls(
        preset=w.Dropdown(options=[(k, p) for k, p in table.items()], value=table[preset], description="preset"),
        feedback=w.Dropdown(options=feedback_options(), value=table[preset].feedback, description="feedback"),
        thetas=sliders,
        n_samples=w.IntSlider(value=n_samples, min=50, max=max_samples, step=50, description="samples",
                              continuous_update=False),
        source=w.HTML(),
    )
    controls.apply(table[preset])
    return controls


def playground(controls: Controls, initial_figure=None, **run_kw: Any):
    """The live playground: controls plus an output area redrawn by :func:`run_and_plot`
    whenever a control changes. ``initial_figure`` is shown first (so the figure computed
    headless with the same defaults is not computed twice); ``run_kw`` go to run_and_plot.
    Returns an ``ipywidgets.VBox`` (display it; building it needs no frontend)."""
    import ipywidgets as w
    from IPython.display import display

    out = w.Output()
    busy = {"applying_preset": False}

    def redraw(_: Any = None) -> None:
        if busy["applying_preset"]:
            return
        with out:
            out.clear_output(wait=True)
            fig, _ = run_and_plot(**controls.values(), **run_kw)
            display(fig)

    def on_preset(change: dict) -> None:
        busy["applying_preset"] = True
        try:
            controls.apply(change["new"])
        finally:
            busy["applying_preset"] = False
        redraw()

    controls.preset.observe(on_preset, names="value")
    for c in (controls.feedback, controls.n_samples, *controls.thetas):
        c.observe(redraw, names="value")
    if initial_figure is not None:
        with out:
            display(initial_figure)
    left = w.VBox([controls.preset, controls.source, controls.feedback, controls.n_samples])
    return w.VBox([w.HBox([left, w.VBox(controls.thetas)]), out])
