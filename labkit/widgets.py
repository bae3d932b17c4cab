"""The playground of notebook 04: rule presets, ipywidgets controls and one run-and-plot function.

Everything the widgets do goes through ordinary functions, so a notebook can call them
headless (papermill, tests) and get the same figure the live controls show:

* :func:`presets` -> named rules ("FA (lr only)", "discovered bio", "eHebb", "Oja", "BP",
  "FA + Kolen-Pollack feedback"), read from committed results folders when present, else
  documented fallback values;
* :func:`run_and_plot` -> the online learning curve of one rule (as in Fig. 1 of the paper:
  a fresh network sees a stream of images once, batch size 1, and is tested on held-out
  images every few samples; computed by :func:`labkit.tutorial.online_learning`, which also
  serves notebook 01), with FA and BP references at the same theta_0, and the
  teaching-signal angles alpha_l, as one matplotlib figure; with plastic feedback (some
  phi_s != 0, pathway ``"fa"``) a third panel shows the angles between W_l and B_l^T;
* :func:`build_controls` / :func:`playground` -> the ipywidgets front end that calls
  :func:`run_and_plot` whenever a control changes. Building them needs no frontend.

Plastic feedback (docs/plastic-feedback.md): one slider per feedback term phi_s makes the
feedback matrices learn, ``B_l <- B_l + sum_s phi_s G^s``. All phi are 0 by default, and then
every run and figure is exactly what it is without plastic feedback. Only pathways with free
matrices shaped like W^T accept it (``"fa"``): for any other pathway the phi sliders are
disabled with a note saying why, and :func:`run_and_plot` ignores phi and says so in the title.

Nothing here lists terms or pathways: the sliders are one per row of
:data:`labkit.terms.TERMS` and :data:`labkit.feedback_terms.FEEDBACK_TERMS` (their ``name``
and ``slider`` range), the feedback menu is every pathway registered in
:mod:`labkit.pathways` at the time the controls are built (labelled "<label> (<name>)"), and
which pathways take plastic feedback is asked of :mod:`labkit.feedback`, so a new term or
pathway shows up without editing this module.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import pathways
from .data import DatasetNotFoundError
from .feedback import check_plastic_feedback, plastic_feedback_allowed
from .feedback_terms import FEEDBACK_TERMS, N_FEEDBACK_TERMS
from .terms import TERMS
from .tutorial import online_learning, phi_vector, theta_vector  # noqa: F401  (part of this module's API)

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
    "FA + Kolen-Pollack feedback": {0: 0.01},
}
#: Fallback feedback coefficients (phi_s by feedback term, plastic feedback) of the presets
#: whose feedback learns; every other preset has phi = 0 (fixed feedback). Hand-set, NOT
#: meta-learned: on the same digits stream (1000 samples, 3 trials, theta_0 = 0.01) the
#: Kolen-Pollack term at phi_0 = theta_0 (B_l^T gets W_l's pseudo-gradient update) gave test
#: accuracy ~0.43 against ~0.36 for fixed FA, with teaching-signal angles alpha_l of 45-65
#: degrees instead of ~85; adding the feedback decay phi_1 = 1e-3 made it worse on this short
#: stream (the decay forgets B's random start, but also what B has learnt), so it is 0 here.
FALLBACK_PHI: dict[str, dict[int, float]] = {
    "FA + Kolen-Pollack feedback": {0: 0.01},
}
#: Results folder (under the results directory; ``paper/``: the paper-scale runs) and feedback
#: pathway of each preset (any registered pathway, see ``labkit.pathways.names()``).
PRESET_SOURCES: dict[str, tuple[str, str]] = {
    "FA (lr only)": ("paper/fa_lr", "fa"),
    "discovered bio": ("paper/bio", "fa"),
    "eHebb": ("paper/ehebb", "fa"),
    "Oja": ("paper/oja", "fa"),
    "BP": ("paper/bp_lr", "bp"),
    "FA + Kolen-Pollack feedback": ("kp_lr", "fa"),  # labkit discover --rule fa --feedback-rule kp
}
DEFAULT_PRESET = "discovered bio"


@dataclass(frozen=True)
class Preset:
    """A named rule: feedback pathway (any registered one), one coefficient per term of
    :data:`labkit.terms.TERMS`, where they come from, and (plastic feedback) one coefficient
    per feedback term of :data:`labkit.feedback_terms.FEEDBACK_TERMS` (default: all 0, fixed B)."""

    name: str
    feedback: str
    theta: tuple[float, ...]  # one per term (N_TERMS), zeros for unused terms
    source: str  # "mean of 20 meta-trained trials in ../results/paper/bio" or "fallback (hand-set, ...)"
    phi: tuple[float, ...] = ()  # one per feedback term (N_FEEDBACK_TERMS); () = all zero

    def __post_init__(self) -> None:
        pathways.get(self.feedback)  # a ValueError naming the registered pathways otherwise
        phi = tuple(float(v) for v in phi_vector(self.phi if len(self.phi) else None))
        object.__setattr__(self, "phi", phi)
        check_plastic_feedback(self.feedback, [s for s, v in enumerate(phi) if v != 0.0])


def feedback_options() -> list[tuple[str, str]]:
    """The feedback menu: ``("<label> (<name>)", name)`` for every registered pathway, in
    the registry's order (``labkit.pathways.names()``: bp, fa, dfa first)."""
    return [(f"{pathways.get(k).label} ({k})", k) for k in pathways.names()]


def slider_specs() -> list[tuple[int, str, float, float]]:
    """``(index, name, min, max)`` of each theta_r slider, from :data:`labkit.terms.TERMS`
    (``Term.slider``: theta_0, the learning rate, is non-negative; the other ranges are
    symmetric around 0 and wide enough to reach divergence on the digits stream)."""
    return [(t.index, t.name, float(t.slider[0]), float(t.slider[1])) for t in TERMS]


def phi_slider_specs() -> list[tuple[int, str, float, float]]:
    """``(index, name, min, max)`` of each phi_s slider (plastic feedback), from
    :data:`labkit.feedback_terms.FEEDBACK_TERMS` (``FeedbackTerm.slider``: the Kolen-Pollack
    term 0..0.05, the feedback decay -1e-3..1e-2, eHebb and Oja symmetric around 0; on the
    digits stream the ends of the ranges reach divergence or wipe out what B carries)."""
    return [(t.index, t.name, float(t.slider[0]), float(t.slider[1])) for t in FEEDBACK_TERMS]


def plastic_feedback_note(feedback: str) -> str:
    """One line on whether pathway ``feedback`` takes plastic feedback: empty when it does,
    else why not (the reason :func:`labkit.feedback.check_plastic_feedback` gives) and that
    phi is ignored."""
    if plastic_feedback_allowed(feedback):
        return ""
    try:
        check_plastic_feedback(feedback, [0])
    except ValueError as err:
        reason = str(err).split(": ", 1)[-1]
    else:  # pragma: no cover (allowed above)
        reason = ""
    return f"phi is ignored with the {feedback!r} pathway: {reason}"


def _mean_coefficients(entry: dict) -> dict[int, float] | None:
    """``{index: value}`` from a ``mean`` dict keyed ``theta_r`` / ``phi_s``; None if empty or not finite."""
    mean = {int(k.split("_")[1]): v for k, v in (entry.get("mean") or {}).items()}
    return mean if mean and all(v is not None and math.isfinite(v) for v in mean.values()) else None


def presets(results_dir: str | Path | None = "../results") -> dict[str, Preset]:
    """The playground's presets, by name.

    A preset takes the mean final theta (and, for a run with plastic feedback, phi) over the
    non-diverged trials of its results folder (``results_dir/<folder>/theta.json``, see
    :data:`PRESET_SOURCES`) when it exists, else the fallbacks of :data:`FALLBACK_THETA` and
    :data:`FALLBACK_PHI`. ``results_dir=None`` uses the fallbacks only.
    """
    from .results import read_phi, read_theta

    out: dict[str, Preset] = {}
    for name, (folder_name, feedback) in PRESET_SOURCES.items():
        folder = Path(results_dir) / folder_name if results_dir is not None else None
        theta, source = theta_vector(FALLBACK_THETA[name]), "fallback (hand-set, not meta-learned)"
        phi = phi_vector(FALLBACK_PHI.get(name))
        if folder is not None and (folder / "theta.json").is_file():
            d, ph = read_theta(folder), read_phi(folder)
            mean = _mean_coefficients(d)
            mean_phi = _mean_coefficients(ph) if ph is not None else {}  # {}: the run's feedback was fixed
            # a preset with plastic feedback needs a run with plastic feedback (else: its fallback)
            if mean is not None and mean_phi is not None and (mean_phi or name not in FALLBACK_PHI):
                theta, phi = theta_vector(mean), phi_vector(mean_phi)
                source = f"mean of {d.get('n_trials_used', '?')} meta-trained trials in {folder}"
        out[name] = Preset(name, feedback, tuple(float(v) for v in theta), source, tuple(float(v) for v in phi))
    return out


# ----------------------------------------------------------------------------- computing


def _describe_theta(theta: np.ndarray) -> str:
    return ", ".join(rf"$\theta_{{{r}}}$={v:.2g}" for r, v in enumerate(theta) if v != 0) or "all zero"


def _describe_phi(phi: np.ndarray) -> str:
    return ", ".join(rf"$\phi_{{{s}}}$={v:.2g}" for s, v in enumerate(phi) if v != 0)


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
    phi: Sequence[float] | np.ndarray | None = None,
):
    """Run :func:`labkit.tutorial.online_learning` for the chosen rule and plot it; returns ``(fig, curves)``.

    ``feedback`` is any registered pathway (``labkit.pathways.names()``); ``theta`` one
    coefficient per term of :data:`labkit.terms.TERMS`; ``phi`` (optional, plastic feedback)
    one coefficient per feedback term of :data:`labkit.feedback_terms.FEEDBACK_TERMS`.
    Left: test accuracy against training samples (mean over trials, 98% bootstrap band), with
    the pathways of :data:`REFERENCES` (FA and BP) using theta_0 alone at the same theta_0 as
    references (``references=True``) and the chance line 1/n_classes of the stream (10% for
    digits). Right: teaching-signal angles alpha_l to backprop, per hidden layer, for the
    chosen rule. Legends sit right of each panel, outside the curves.

    With some phi_s != 0 and a pathway that takes plastic feedback (``"fa"``), the chosen
    rule's feedback matrices learn too (``B_l <- B_l + sum_s phi_s G^s``; the references keep
    theirs fixed), alpha_l is measured through the current B, and a third panel shows the
    angle between W_l and B_l^T per layer (:func:`labkit.metrics.weight_angles`). With any
    other pathway phi is ignored, and the title says so and why (no error). With phi = 0 (or
    None) the figure is exactly the one without plastic feedback.

    ``every`` defaults to n_samples // 20 (at least 10). ``curves`` maps each curve's label to
    the :func:`~labkit.tutorial.online_learning` result. The figure is closed in pyplot
    (display it yourself), so calling this repeatedly does not pile up figures.
    """
    import matplotlib.pyplot as plt

    from .plots import chance_level, plot_online_curves

    theta = theta_vector(theta)
    phi = phi_vector(phi)
    plastic = bool(np.any(phi != 0.0))
    ignored = plastic_feedback_note(feedback) if plastic else ""
    plastic = plastic and not ignored
    every = every or max(10, int(n_samples) // 20)
    kw = dict(trials=trials, every=every, dataset=dataset, data_root=data_root, seed=seed)
    own = f"{label} ({feedback}{', plastic B' if plastic else ''})"
    curves = {own: online_learning(feedback, theta, n_samples, **kw, **({"phi": phi} if plastic else {}))}
    if references:
        lr_only = theta_vector({0: theta[0]})
        for fb, name in REFERENCES:
            if fb != feedback or plastic or not np.array_equal(theta, lr_only):
                curves[f"{name}, theta_0 only"] = online_learning(fb, lr_only, n_samples, **kw)
    main = next(iter(curves.values()))

    ncols = 3 if plastic else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), layout="constrained")
    ax_acc, ax_alpha = axes[0], axes[1]
    plot_online_curves({k.replace("theta_0", r"$\theta_0$"): (c["steps"], c["accuracy"]) for k, c in curves.items()},
                       ax=ax_acc, chance=chance_level(main["n_classes"]))
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("test accuracy during online learning", fontsize="medium")
    alpha = main["alpha"]  # (T, S, L-1)
    plot_online_curves({rf"$\alpha_{{{l + 1}}}$": (main["steps"], alpha[:, :, l]) for l in range(alpha.shape[2])},
                       ax=ax_alpha, ylabel="alignment angle to backprop (deg)")
    ax_alpha.set_ylim(0, 180)
    ax_alpha.set_title(f"teaching-signal angles of {label} ({feedback})", fontsize="medium")
    if plastic:
        wa = main["weight_angle"]  # (T, S, L)
        plot_online_curves({rf"$\angle(W_{{{l + 1}}}, B_{{{l + 1}}}^\top)$": (main["steps"], wa[:, :, l])
                            for l in range(wa.shape[2])}, ax=axes[2], ylabel=r"angle between $W_\ell$ and $B_\ell^\top$ (deg)")
        axes[2].set_ylim(0, 180)
        axes[2].set_title(r"forward vs plastic feedback weights ($B_\ell$ learns)", fontsize="medium")
    n_div = int(main["diverged"].sum())
    fig.suptitle(
        f"{dataset}, one pass of {main['n_samples']} samples, batch size 1, {trials} trials (mean, 98% band); "
        f"{label}: {_describe_theta(theta)}"
        + (f"; plastic feedback {_describe_phi(phi)}" if plastic else "")
        + (f"  [{n_div} of {trials} trials DIVERGED]" if n_div else "")
        + (f"\n[{ignored}]" if ignored else ""),
        fontsize="medium",
    )
    plt.close(fig)
    return fig, curves


# ----------------------------------------------------------------------------- widgets


@dataclass
class Controls:
    """The playground's ipywidgets: preset, feedback, one slider per theta_r, samples, and
    (plastic feedback) one slider per phi_s with a note on whether the pathway takes them."""

    preset: Any  # ipywidgets.Dropdown whose values are Preset objects
    feedback: Any  # ipywidgets.Dropdown over every registered pathway (feedback_options())
    thetas: list  # one ipywidgets.FloatSlider per term of labkit.terms.TERMS
    n_samples: Any  # ipywidgets.IntSlider
    source: Any  # ipywidgets.HTML saying where the preset's values come from
    phis: list = field(default_factory=list)  # one ipywidgets.FloatSlider per feedback term (FEEDBACK_TERMS)
    phi_note: Any = None  # ipywidgets.HTML: what phi does, or why the chosen pathway ignores it

    def values(self) -> dict[str, Any]:
        """Current ``feedback``, ``theta`` (one per term), ``n_samples``, ``phi`` (one per feedback
        term; all 0 without phi sliders) and ``label`` (the preset's name, marked ", hand-set" for a
        fallback, while the controls still match it; else "custom rule"): keyword arguments of
        :func:`run_and_plot`."""
        theta = np.array([s.value for s in self.thetas], dtype=float)
        phi = np.array([s.value for s in self.phis], dtype=float) if self.phis else np.zeros(N_FEEDBACK_TERMS)
        p = self.preset.value
        same = (p.feedback == self.feedback.value and np.allclose(theta, p.theta, rtol=1e-6, atol=0.0)
                and np.allclose(phi, p.phi, rtol=1e-6, atol=0.0))
        return {
            "feedback": self.feedback.value,
            "theta": theta,
            "n_samples": int(self.n_samples.value),
            "phi": phi,
            "label": (p.name + (", hand-set" if p.source.startswith("fallback") else "")) if same else "custom rule",
        }

    def apply(self, preset: Preset) -> None:
        """Set feedback and sliders to a preset (widening a slider whose range is too small)."""
        self.feedback.value = preset.feedback
        for slider, v in zip([*self.thetas, *self.phis], [*preset.theta, *preset.phi]):
            if v < slider.min:
                slider.min = v
            if v > slider.max:
                slider.max = v
            slider.value = v
        self.source.value = f"<small>{preset.name}: {preset.source}</small>"
        self.sync_phi()

    def sync_phi(self) -> None:
        """Enable the phi sliders when the chosen pathway takes plastic feedback, else disable
        them and say why in ``phi_note`` (their values are then ignored by run_and_plot)."""
        note = plastic_feedback_note(self.feedback.value)
        for slider in self.phis:
            slider.disabled = bool(note)
        if self.phi_note is not None:
            self.phi_note.value = (f"<small><b>Not available:</b> {html.escape(note)}</small>" if note else
                                   "<small>Plastic feedback: B<sub>l</sub> &larr; B<sub>l</sub> + &Sigma;<sub>s</sub> "
                                   "&phi;<sub>s</sub> G<sup>s</sup> after every sample (all 0: B stays fixed). "
                                   "With some &phi;<sub>s</sub> &ne; 0 a third panel shows the angle between "
                                   "W<sub>l</sub> and B<sub>l</sub><sup>T</sup>.</small>")


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

    def slider(symbol: str, index: int, name: str, lo: float, hi: float):
        return w.FloatSlider(value=0.0, min=lo, max=hi, step=(hi - lo) / 400, description=f"{symbol}{index} {name}",
                             readout_format=".2e", continuous_update=False, style=style,
                             layout=w.Layout(width="460px"))

    controls = Controls(
        preset=w.Dropdown(options=[(k, p) for k, p in table.items()], value=table[preset], description="preset"),
        feedback=w.Dropdown(options=feedback_options(), value=table[preset].feedback, description="feedback"),
        thetas=[slider("θ", r, name, lo, hi) for r, name, lo, hi in slider_specs()],
        n_samples=w.IntSlider(value=n_samples, min=50, max=max_samples, step=50, description="samples",
                              continuous_update=False),
        source=w.HTML(),
        phis=[slider("φ", s, name, lo, hi) for s, name, lo, hi in phi_slider_specs()],
        phi_note=w.HTML(layout=w.Layout(width="460px")),
    )
    controls.apply(table[preset])
    controls.feedback.observe(lambda _: controls.sync_phi(), names="value")
    return controls


def playground(controls: Controls, initial_figure=None, **run_kw: Any):
    """The live playground: controls plus an output area redrawn by :func:`run_and_plot`
    whenever a control changes. ``initial_figure`` is shown first (so the figure computed
    headless with the same defaults is not computed twice); ``run_kw`` go to run_and_plot.
    A setting that cannot run (a ValueError, or a dataset not on disk) prints its message
    in the output area instead of a traceback.
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
            try:
                fig, _ = run_and_plot(**controls.values(), **run_kw)
            except (ValueError, DatasetNotFoundError) as err:
                print(f"cannot run this setting: {err}")
                return
            display(fig)

    def on_preset(change: dict) -> None:
        busy["applying_preset"] = True
        try:
            controls.apply(change["new"])
        finally:
            busy["applying_preset"] = False
        redraw()

    controls.preset.observe(on_preset, names="value")
    for c in (controls.feedback, controls.n_samples, *controls.thetas, *controls.phis):
        c.observe(redraw, names="value")
    if initial_figure is not None:
        with out:
            display(initial_figure)
    left = w.VBox([controls.preset, controls.source, controls.feedback, controls.n_samples])
    right = [*controls.thetas]
    if controls.phis:
        right += [w.HTML("<b>plastic feedback</b> (pathway fa only)"), *controls.phis]
        right += [controls.phi_note] if controls.phi_note is not None else []
    return w.VBox([w.HBox([left, w.VBox(right)]), out])
