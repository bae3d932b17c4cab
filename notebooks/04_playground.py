# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Playground: build your own plasticity rule
#
# *Tutorial 4 of `labkit`, reproducing N. Shervani-Tabar & R. Rosenbaum, "Meta-learning
# biologically plausible plasticity rules with random feedback pathways",
# Nature Communications 14, 1805 (2023), [doi:10.1038/s41467-023-37562-1](https://doi.org/10.1038/s41467-023-37562-1).*
#
# Notebooks 01-03 showed that feedback alignment (FA) learns slowly online, that
# meta-learning finds a better rule $F^{bio}$ (pseudo-gradient + eHebb + Oja) and what each of
# its terms does. Here you set the coefficients $\theta_r$ of the pool by hand (the paper's ten,
# $\theta_0 .. \theta_9$: one slider per term of `labkit.terms.TERMS`) and watch a fresh
# 784-170-130-100-70-10 network learn online (batch size 1, one pass):
#
# $$W_\ell \leftarrow W_\ell + \sum_{r} \theta_r F^r_\ell .$$
#
# The errors reach the hidden layers through a feedback pathway of your choice: the paper's
# backprop (`bp`), feedback alignment (`fa`) and direct feedback alignment (`dfa`), and also
# sign-symmetry (`usf`: the signs of $W^\top$ times one uniform magnitude; `frsf`: the signs of $W^\top$
# with fixed random magnitudes) and direct random target projection (`drtp`: the *target*, not
# the error, sent to every hidden layer through fixed random matrices). The menu lists every
# pathway registered in `labkit.pathways`.
#
# **Objectives.** After this notebook you can
#
# 1. reproduce the online learning curves of FA, BP and the discovered rule from presets;
# 2. change single coefficients and see their effect on accuracy *and* on the alignment of
#    the teaching signals with backprop's ($\alpha_\ell$);
# 3. find, by hand, how large each term may be before online learning becomes unstable.
#
# The controls come from `labkit.widgets`. Every control calls one ordinary function,
# `widgets.run_and_plot(feedback, theta, n_samples, ...)`, which returns the figure and the
# curves; below we call it once with the default values (so the notebook also runs headless,
# e.g. under papermill) and save that figure as `04_playground_default.png`.

# %% Setup: imports, seeds, threads
import numpy as np
from IPython.display import display

from labkit import pathways, widgets
from labkit.terms import TERMS
from labkit.tutorial import figure_folder, save_figure, setup_notebook

setup_notebook(seed=0)  # seeds (and threads), set once

# %% tags=["parameters"]
SMOKE = False  # True: short stream, few trials (for tests)
RESULTS_DIR = "../results"
FIG_DIR = "../figures"
PRESET = "discovered bio"  # starting preset: "FA (lr only)", "discovered bio", "eHebb", "Oja", "BP"
N_SAMPLES = 600  # default length of the online stream
TRIALS = 3  # independent networks per curve
DATASET = "digits"  # the bundled offline digits (fast); "mnist" if on disk

# %%
if SMOKE:
    N_SAMPLES, TRIALS = 100, 2
FIG_DIR = figure_folder(FIG_DIR, SMOKE)  # a smoke run never writes into the committed figures/
print(f"SMOKE={SMOKE}: {N_SAMPLES} samples, {TRIALS} trials on {DATASET}")

# %% [markdown]
# ## 1 · Presets
#
# Each preset fixes the feedback pathway and the ten coefficients. When a meta-training run
# is committed in `RESULTS_DIR/paper` (`fa_lr`, `bio`, `ehebb`, `oja`, `bp_lr`) the preset uses the mean
# of its final $\theta$ over the trials; otherwise a documented, hand-set fallback
# (`widgets.FALLBACK_THETA`, tuned by a small grid on the digits stream, *not* meta-learned).
# The preset "FA + Kolen-Pollack feedback" also makes the feedback matrices learn (plastic
# feedback, $\phi_s$; notebook 05), from `kp_lr` when present, else `widgets.FALLBACK_PHI`.

# %%
table = widgets.presets(RESULTS_DIR)
for name, p in table.items():
    terms = ", ".join([f"theta_{r}={v:.3g}" for r, v in enumerate(p.theta) if v != 0]
                      + [f"phi_{s}={v:.3g}" for s, v in enumerate(p.phi) if v != 0])
    print(f"{name:27s} feedback={p.feedback:3s} {terms:45s} <- {p.source}")

# %% [markdown]
# A note on signs: the pool's terms carry their own minus signs, e.g. $F^2 = -e_\ell e_{\ell-1}^\top$.
# Under FA, $e_{\ell-1} = (B_\ell e_\ell) \odot \sigma'$, so $e_\ell e_{\ell-1}^\top$ points roughly along
# $B_\ell^\top$ (notebook 03): a *negative* $\theta_2$ moves $W_\ell$ towards $B_\ell^\top$, which aligns the
# forward weights with the feedback.
#
# ## 2 · The default figure, computed headless
#
# The controls are built set to `PRESET`; `controls.values()` gives their current values, the
# keyword arguments of `run_and_plot`. Left: test accuracy on held-out images while the
# network learns, with FA and BP using $\theta_0$ alone (same $\theta_0$) as references. Right: the
# teaching-signal angles $\alpha_\ell$ of your rule to backprop, per hidden layer.

# %%
controls = widgets.build_controls(RESULTS_DIR, preset=PRESET, n_samples=N_SAMPLES)
defaults = controls.values()
print("defaults:", {k: (np.round(v, 4).tolist() if isinstance(v, np.ndarray) else v) for k, v in defaults.items()})
fig, curves = widgets.run_and_plot(**defaults, trials=TRIALS, dataset=DATASET)
save_figure(fig, FIG_DIR, "04_playground_default.png")
display(fig)
for label, c in curves.items():
    print(f"{label:22s} test accuracy after {c['n_samples']} samples: {c['accuracy'][:, -1].mean():.2f} "
          f"(trials: {', '.join(f'{a:.2f}' for a in c['accuracy'][:, -1])})")

# %% [markdown]
# ## 3 · The live playground
#
# Move a slider (it recomputes when you release it), pick another feedback pathway, preset or
# stream length. Each change runs `TRIALS` fresh networks (a few seconds); results are cached,
# so going back to an earlier setting is instant. Without a live kernel (e.g. on GitHub) you
# see only the controls.
#
# Below the ten $\theta_r$ sliders are four $\phi_s$ sliders for *plastic feedback*: after every
# sample the feedback matrices change too, $B_\ell \leftarrow B_\ell + \sum_s \phi_s G^s_\ell$ (Kolen-Pollack,
# feedback decay, feedback eHebb, feedback Oja; notebook 05). They are all 0 by default (fixed
# $B$, as in the paper) and work with the `fa` pathway only: for any other pathway they are
# disabled and a note says why. With some $\phi_s \ne 0$ a third panel shows the angle between
# $W_\ell$ and $B_\ell^\top$.

# %%
widgets.playground(controls, initial_figure=fig, trials=TRIALS, dataset=DATASET)

# %% [markdown]
# **Think!** Start from "FA (lr only)" and add a *negative* $\theta_2$ (eHebb). Does accuracy
# improve because the learning rate is effectively larger, or because the teaching signals
# align ($\alpha_\ell$ falls)? Now try "Oja" instead: which panel changes?
#
# **Think!** Switch the "BP" preset's feedback to `fa` and back. Which part of the gap does
# $\theta_0$ explain, and which part does the pathway explain?
#
# **Think!** Pick "FA (lr only)" and raise $\phi_0$ (Kolen-Pollack) step by step. When does the
# angle between $W_\ell$ and $B_\ell^\top$ start to fall, and do the teaching-signal angles $\alpha_\ell$
# follow? What does the feedback decay $\phi_1$ add?
#
# **Think!** Try sign-symmetry: with "FA (lr only)", switch the feedback to `usf`, then `frsf`.
# Both transport only the *signs* of the forward weights. How close do they get to `bp`, and how
# large are their angles $\alpha_\ell$ compared with `fa`'s? Then try `drtp`, which sends the
# target instead of the error: does adding eHebb (negative $\theta_2$) still help there?
#
# ### Summary
# * The discovered bio rule ($\theta_0, \theta_2, \theta_9$) brings FA close to backprop's online
#   learning; $\theta_0$ alone cannot.
# * In the paper, eHebb (here: negative $\theta_2$) lowers the alignment angles, while Oja's term
#   ($\theta_9$) helps accuracy with little change in alignment (it makes the forward weights more
#   orthonormal, notebook 03). Check which of these you see on the stream above.
#
# ### Exercises
# 1. With the bio preset, raise $\theta_9$ step by step. At what value does learning break down
#    (watch for the "DIVERGED" mark in the title)? Why is Oja's term dangerous with large inputs?
# 2. Set every coefficient to zero except one higher-order term ($\theta_5..\theta_8$) plus a small
#    $\theta_0$. Do any of them help? The paper's L1 penalty removed them all.
# 3. Compare `dfa` with `fa` under the bio preset. Does the discovered rule transfer to direct
#    feedback alignment?
# 4. Run the headless function yourself with 5 trials and 1500 samples:
#    `widgets.run_and_plot("fa", widgets.theta_vector({0: 0.01, 2: -0.05}), 1500, trials=5)`.

# %% [markdown]
# ## Summary
#
# * `labkit.widgets` gives presets for the paper's rules, one slider per plasticity term, a menu of
#   every registered feedback pathway and one function, `run_and_plot`, that trains fresh networks
#   online and plots accuracy (with the chance line) and alignment.
# * The figure above (`04_playground_default.png`) is the default preset; the same call underlies
#   every update of the live controls.
# * Term and pathway reference (the pool, notebook 02; `labkit.terms` and `labkit.pathways`):

# %%
for t in TERMS:
    lo, hi = t.slider
    print(f"theta_{t.index}: {t.name:28s} F = {t.equation:36s} slider range [{lo:g}, {hi:g}]")
print()
for name in pathways.names():
    pw = pathways.get(name)
    print(f"{name:5s} {pw.label:36s} {pw.equation}")
