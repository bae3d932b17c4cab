"""The playground of notebook 04: rule presets, ipywidgets controls and one run-and-plot function.

Everything the widgets do goes through ordinary functions, so a notebook can call them
headless (papermill, tests) and get the same figure the live controls show:

* :func:`presets` -> named rules ("FA (lr only)", "discovered bio", "eHebb", "Oja", "BP"),
  read from committed results folders when present, else documented fallback values;
* :func:`online_learning` -> the online learning curve of one rule (PAPER.md Fig 1): a
  fresh network sees a stream of images once, batch size 1, and is tested on held-out
  images every few samples;
* :func:`run_and_plot` -> that curve (with FA and BP references at the same theta_0) and
  the teaching-signal angles alpha_l, as one matplotlib figure;
* :func:`build_controls` / :func:`playground` -> the ipywidgets front end that calls
  :func:`run_and_plot` whenever a control changes. Building them needs no frontend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .data import load_dataset
from .feedback import FEEDBACK_KINDS, init_feedback
from .learner import learning_curve
from .meta import HIDDEN_PAPER, trial_generators
from .networks import init_weights
from .rules import N_TERMS, TERM_NAMES, make_rule

#: Slider range (min, max) per term. theta_0 (the learning rate) is non-negative; the other
#: terms are symmetric around 0, wide enough to reach divergence on the digits stream.
SLIDER_RANGES: dict[int, tuple[float, float]] = {
    0: (0.0, 0.05),
    1: (-0.01, 0.01),
    2: (-0.1, 0.1),
    3: (-1e-3, 1e-3),
    4: (-0.01, 0.01),
    5: (-1e-3, 1e-3),
    6: (-1e-3, 1e-3),
    7: (-1e-3, 1e-3),
    8: (-1e-3, 1e-3),
    9: (-0.01, 0.01),
}

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
#: Results folder (under the results directory) and feedback pathway of each preset.
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
    """A named rule: feedback pathway, the ten coefficients, and where they come from."""

    name: str
    feedback: str
    theta: tuple[float, ...]  # length N_TERMS, zeros for unused terms
    source: str  # "mean of 4 meta-trained trials in ../results/bio" or "fallback (hand-set, ...)"


def theta_vector(values: Mapping[int, float] | Sequence[float]) -> np.ndarray:
    """A (10,) float array from ``{term: value}`` or a full sequence of 10 numbers."""
    if isinstance(values, Mapping):
        th = np.zeros(N_TERMS)
        for r, v in values.items():
            th[int(r)] = float(v)
        return th
    th = np.asarray(values, dtype=float).reshape(-1)
    if th.shape != (N_TERMS,):
        raise ValueError(f"theta needs {N_TERMS} numbers (zeros for unused terms), got {th.shape[0]}")
    return th


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


@lru_cache(maxsize=4)
def stream_data(
    dataset: str = "digits", data_root: str | None = None, n_eval: int = 300, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x_stream, y_stream, x_eval, y_eval, n_classes) for online learning curves. Cached.

    ``digits`` has one split: a seeded random ``n_eval`` images are held out for testing.
    Other datasets stream their training split and test on the first ``n_eval`` images of
    their test split. Raises :class:`labkit.data.DatasetNotFoundError` when files are missing.
    """
    if dataset == "digits":
        ds = load_dataset("digits")
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        ev, tr = perm[:n_eval], perm[n_eval:]
        return ds.images[tr], ds.labels[tr], ds.images[ev], ds.labels[ev], ds.n_classes
    train = load_dataset(dataset, data_root, split="train")
    test = load_dataset(dataset, data_root, split="test")
    return train.images, train.labels, test.images[:n_eval], test.labels[:n_eval], train.n_classes


def online_learning(
    feedback: str,
    theta: Sequence[float] | np.ndarray,
    n_samples: int,
    trials: int = 3,
    every: int = 50,
    dataset: str = "digits",
    data_root: str | None = None,
    seed: int = 0,
    hidden: Sequence[int] = HIDDEN_PAPER,
) -> dict[str, Any]:
    """Online learning curve of one rule, ``trials`` independent networks (PAPER.md Fig 1).

    Trial i draws its W (and B) and its order of the stream from ``trial_generators(seed, i)``,
    so different feedback pathways or rules start from the same W and see the same images.
    The rule's terms are those with theta_r != 0 (theta_0 alone if all are zero). One pass:
    ``n_samples`` is capped at the size of the stream.

    Returns numpy arrays ``steps (S,)``, ``accuracy (T, S)``, ``loss (T, S)``,
    ``alpha (T, S, L-1)`` (see :func:`labkit.learner.learning_curve`) plus ``n_samples``
    (used), ``trials``, ``dataset``, ``diverged (T,)`` (non-finite final loss).
    """
    theta = theta_vector(theta)
    return dict(_online_learning_cached(feedback, tuple(theta.tolist()), int(n_samples), int(trials), int(every),
                                        dataset, data_root, int(seed), tuple(int(h) for h in hidden)))


@lru_cache(maxsize=32)
def _online_learning_cached(feedback, theta, n_samples, trials, every, dataset, data_root, seed, hidden):
    if feedback not in FEEDBACK_KINDS:
        raise ValueError(f"feedback must be one of {', '.join(FEEDBACK_KINDS)}, got {feedback!r}")
    x, y, x_eval, y_eval, n_classes = stream_data(dataset, data_root)
    n = min(n_samples, len(x))
    sizes = (x.shape[1], *hidden, n_classes)
    gens = [trial_generators(seed, i) for i in range(trials)]
    order = torch.stack([torch.randperm(len(x), generator=g[0])[:n] for g in gens])  # (T, n)
    weight_gens = [g[1] for g in gens]
    Ws = init_weights(sizes, weight_gens)
    Bs = init_feedback(feedback, sizes, weight_gens)
    terms = [r for r in range(N_TERMS) if theta[r] != 0.0] or [0]
    rule = make_rule(terms, len(sizes) - 1)
    th = torch.tensor(theta, dtype=torch.float32).expand(trials, -1).contiguous()
    c = learning_curve(Ws, Bs, feedback, rule, th, x[order], y[order],
                       x_eval.expand(trials, -1, -1), y_eval.expand(trials, -1), every=every)
    out = {k: v.numpy() for k, v in c.items()}
    out.update(n_samples=n, trials=trials, dataset=dataset, diverged=~np.isfinite(out["loss"][:, -1]))
    return out


def _describe_theta(theta: np.ndarray) -> str:
    return ", ".join(rf"$\theta_{{{r}}}$={theta[r]:.2g}" for r in range(N_TERMS) if theta[r] != 0) or "all zero"


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
    """Run :func:`online_learning` for the chosen rule and plot it; returns ``(fig, curves)``.

    Left: test accuracy against training samples (mean over trials, 98% bootstrap band), with
    FA and BP using theta_0 alone at the same theta_0 as references (``references=True``).
    Right: teaching-signal angles alpha_l to backprop, per hidden layer, for the chosen rule.
    ``every`` defaults to n_samples // 20 (at least 10). ``curves`` maps each curve's label to
    the :func:`online_learning` result. The figure is closed in pyplot (display it yourself),
    so calling this repeatedly does not pile up figures.
    """
    import matplotlib.pyplot as plt

    from .plots import plot_online_curves

    theta = theta_vector(theta)
    every = every or max(10, int(n_samples) // 20)
    kw = dict(trials=trials, every=every, dataset=dataset, data_root=data_root, seed=seed)
    curves = {f"{label} ({feedback})": online_learning(feedback, theta, n_samples, **kw)}
    if references:
        lr_only = theta_vector({0: theta[0]})
        for fb, name in (("fa", "FA"), ("bp", "BP")):
            if fb != feedback or not np.array_equal(theta, lr_only):
                curves[f"{name}, theta_0 only"] = online_learning(fb, lr_only, n_samples, **kw)
    main = next(iter(curves.values()))

    fig, (ax_acc, ax_alpha) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    plot_online_curves({k.replace("theta_0", r"$\theta_0$"): (c["steps"], c["accuracy"]) for k, c in curves.items()},
                       ax=ax_acc)
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
    feedback: Any  # ipywidgets.Dropdown over FEEDBACK_KINDS
    thetas: list  # N_TERMS ipywidgets.FloatSlider
    n_samples: Any  # ipywidgets.IntSlider
    source: Any  # ipywidgets.HTML saying where the preset's values come from

    def values(self) -> dict[str, Any]:
        """Current ``feedback``, ``theta`` (10,), ``n_samples`` and ``label`` (the preset's name, marked
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
    sliders = []
    for r in range(N_TERMS):
        lo, hi = SLIDER_RANGES[r]
        sliders.append(w.FloatSlider(
            value=0.0, min=lo, max=hi, step=(hi - lo) / 400, description=f"θ{r} {TERM_NAMES[r]}",
            readout_format=".2e", continuous_update=False, style=style, layout=w.Layout(width="460px"),
        ))
    controls = Controls(
        preset=w.Dropdown(options=[(k, p) for k, p in table.items()], value=table[preset], description="preset"),
        feedback=w.Dropdown(options=[("backprop (bp)", "bp"), ("feedback alignment (fa)", "fa"),
                                     ("direct feedback alignment (dfa)", "dfa")],
                            value=table[preset].feedback, description="feedback"),
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
