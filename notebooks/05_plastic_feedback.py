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
# # 05 · Plastic feedback: when the feedback matrices learn too
#
# *Tutorial 5 of `labkit`, an extension of N. Shervani-Tabar & R. Rosenbaum, "Meta-learning
# biologically plausible plasticity rules with random feedback pathways",
# Nature Communications 14, 1805 (2023), [doi:10.1038/s41467-023-37562-1](https://doi.org/10.1038/s41467-023-37562-1).*
#
# In the paper the feedback matrices $B_\ell$ of feedback alignment are drawn at random and
# never change: only the forward weights $W_\ell$ follow the meta-learned rule. Notebooks 01-03
# showed what that costs and how the discovered rule $F^{bio}$ works around it by turning $W_\ell$
# towards $B_\ell^\top$. This notebook goes the other way round and lets $B_\ell$ learn as well, with
# its own meta-learned coefficients $\phi$. The best-known rule of this kind is Kolen and
# Pollack's (J. F. Kolen & J. B. Pollack, "Backpropagation without weight transport", IEEE ICNN
# 1994): give $B_\ell^\top$ the same update as $W_\ell$ and let both decay, and the two become equal
# without any synapse ever reading the other's strength.
#
# **Objectives.** After this notebook you can
#
# 1. say why weight transport is a problem and what a *fixed* random $B$ costs feedback alignment;
# 2. write the plastic-feedback update $B_\ell \leftarrow B_\ell + \sum_s \phi_s G^s_\ell$ and its four
#    terms (Kolen-Pollack, decay, feedback eHebb, feedback Oja), each the mirror image of a
#    forward term;
# 3. show with a small live run that Kolen-Pollack drives the angle between $W_\ell$ and
#    $B_\ell^\top$ towards 0, at the rate the theory predicts, $\|W_\ell - B_\ell^\top\| \propto (1-d)^t$;
# 4. read meta-training runs in which $\theta$ and $\phi$ are learnt together, and compare them
#    with FA, backprop and $F^{bio}$ with fixed feedback.
#
# As in the other notebooks, expensive meta-training is not repeated here: the runs are read
# from `RESULTS_DIR` (`paper/fa_lr`, `paper/bp_lr`, `paper/bio` with fixed feedback; `kp_lr`, `bio_kp`,
# `pool_fbpool` with plastic feedback). A missing folder, or smoke mode, gives a *tiny* run
# computed on the spot instead; the printout and the figure legends say so, and such curves
# only show the mechanics. The design of the feature is in `docs/plastic-feedback.md`.

# %% Setup: imports, seeds, threads
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from labkit import plots, results, rules
from labkit.feedback_terms import B_DECAY, FEEDBACK_TERMS, KP, NAMED_FEEDBACK_RULES
from labkit.meta import HIDDEN_PAPER
from labkit.terms import TERMS
from labkit.tutorial import (figure_folder, load_or_run, online_learning, phi_vector, save_figure, setup_notebook,
                             theta_vector)

setup_notebook(seed=0)  # seeds (and threads), set once
pd.set_option("display.precision", 3)
WINDOW = 10  # episodes of moving-average smoothing, as in the paper's figures

# %% tags=["parameters"]
SMOKE = False  # True: tiny fresh runs and short live runs (for tests); False: read RESULTS_DIR when present
RESULTS_DIR = "../results"
FIG_DIR = "../figures"
FA_SAMPLES = 600  # section 1: online stream of plain FA on the paper's network
FA_TRIALS = 3
DEMO_HIDDEN = (32, 16)  # section 3: the small network of the Kolen-Pollack demo (784-32-16-10)
DEMO_SAMPLES = 400  # online samples of the demo
DEMO_TRIALS = 3
DEMO_EVERY = 10  # measure every DEMO_EVERY samples
DEMO_LR = 0.1  # theta_0 and phi_0 (the pseudo-gradient and its mirror, Kolen-Pollack)
DEMO_DECAY = 0.01  # theta_3 and phi_1 (decay of W and of B)

# %%
if SMOKE:
    FA_SAMPLES, FA_TRIALS = 100, 1
    DEMO_SAMPLES, DEMO_TRIALS, DEMO_EVERY = 150, 2, 25
FIG_DIR = figure_folder(FIG_DIR, SMOKE)  # a smoke run never writes into the committed figures/
PAPER = f"{RESULTS_DIR}/paper"  # the paper-scale runs: 20 trials x 600 episodes each
print(f"SMOKE={SMOKE}: FA stream {FA_SAMPLES} samples x {FA_TRIALS} trials; demo {DEMO_SAMPLES} samples x "
      f"{DEMO_TRIALS} trials; figures -> {FIG_DIR}")

# %% [markdown]
# ## 1 · Weight transport, and what a fixed $B$ costs
#
# Backprop sends the error of layer $\ell$ to layer $\ell-1$ through the transpose of the forward
# weights; feedback alignment (FA) sends it through a separate matrix $B_\ell$ of the same shape:
#
# $$\text{BP: } e_{\ell-1} = (W_\ell^\top e_\ell) \odot \sigma'(z_{\ell-1}), \qquad
#   \text{FA: } e_{\ell-1} = (B_\ell\, e_\ell) \odot \sigma'(z_{\ell-1}).$$
#
# In a brain the backward signal would travel along other synapses than the forward one, and a
# synapse cannot read the strength of another synapse elsewhere. Requiring $B_\ell = W_\ell^\top$
# at all times ("weight transport") is therefore the implausible part of backprop; FA drops it
# by drawing $B_\ell$ at random. The price: at the start $B_\ell$ and $W_\ell^\top$ are unrelated,
# the angle between them is about $90^\circ$, and the hidden layers learn from teaching signals
# that point almost anywhere. With $B$ fixed, the only way out is for $W_\ell$ to turn towards
# $B_\ell^\top$, and plain FA does that slowly. We measure the angle between $W_\ell$ and $B_\ell^\top$
# (flattened, `labkit.metrics.weight_angles`) on the paper's network, 784-170-130-100-70-10,
# before and after an online pass with the pseudo-gradient alone.

# %%
fa_online = online_learning("fa", theta_vector({0: 0.01}), FA_SAMPLES, trials=FA_TRIALS,
                            every=max(10, FA_SAMPLES // 10), hidden=HIDDEN_PAPER, phi=phi_vector(None))
start, end = fa_online["weight_angle"][:, 0].mean(0), fa_online["weight_angle"][:, -1].mean(0)
print(f"plain FA (theta_0 = 0.01, B fixed), {fa_online['n_samples']} samples, {FA_TRIALS} trial(s):")
for l, (a0, a1) in enumerate(zip(start, end), start=1):
    print(f"  layer {l}: angle(W_{l}, B_{l}^T) {a0:5.1f} deg at the start -> {a1:5.1f} deg after the stream")
print(f"test accuracy after the stream: {fa_online['accuracy'][:, -1].mean():.2f}")

# %% [markdown]
# The angles barely move in a few hundred samples: a random $B$ stays random, and $W$ is
# dominated by its random start for a long time.
#
# **Think!** Which of the two matrices, $W_\ell$ or $B_\ell$, would be easier to move towards the
# other if you were allowed to change either? What information would each update need?
#
# ### Summary
# * Backprop needs $W_\ell^\top$ in the backward pass (weight transport); FA uses a random $B_\ell$.
# * With $B$ fixed, $W_\ell$ and $B_\ell^\top$ start at about $90^\circ$ and stay close to that during
#   a short online stream: FA's teaching signals stay poor.
#
# ### Exercises
# 1. Run the cell with `FA_SAMPLES = 1500` (the whole digits stream). How far do the angles fall?
# 2. Why is the angle between two random matrices of this size so close to $90^\circ$? Estimate
#    its spread for an $n \times m$ matrix with independent entries.

# %% [markdown]
# ## 2 · Plastic feedback: four terms for $B$
#
# With plastic feedback, after every sample and at the same step as the forward update,
#
# $$W_\ell \leftarrow W_\ell + \sum_r \theta_r F^r_\ell, \qquad B_\ell \leftarrow B_\ell + \sum_s \phi_s G^s_\ell ,$$
#
# where both updates read the same activities $y$ and errors $e$ of the current sample (those
# of the weights *before* the step). The feedback terms, declared in
# `labkit.feedback_terms.FEEDBACK_TERMS`:
#
# | $s$ | name | $G^s_\ell$ | mirror of |
# |---|---|---|---|
# | 0 | Kolen-Pollack | $-y_{\ell-1}\, e_\ell^\top$ | $F^0 = -e_\ell\, y_{\ell-1}^\top$ (pseudo-gradient) |
# | 1 | feedback decay | $-B_\ell$ | $F^3 = -W_\ell$ (weight decay) |
# | 2 | feedback eHebb | $-e_{\ell-1}\, e_\ell^\top$ | $F^2 = -e_\ell\, e_{\ell-1}^\top$ (eHebb) |
# | 3 | feedback Oja | $y_{\ell-1} y_\ell^\top - B_\ell\, y_\ell y_\ell^\top$ | $F^9 = y_\ell y_{\ell-1}^\top - y_\ell y_\ell^\top W_\ell$ (Oja) |
#
# Each $G^s$ is its forward term with $W_\ell$ read as $B_\ell^\top$, transposed to the shape of
# $B_\ell$. Every term is *local* to the feedback synapse: $B_\ell$ connects the error unit of layer
# $\ell$ to layer $\ell-1$, and its update uses only $e_\ell$, $y_{\ell-1}$ (and $e_{\ell-1}$, $y_\ell$), never
# $W$. One vector $\phi$ per trial is shared by all layers, like $\theta$; named feedback rules pick
# the plastic terms: `kp` = {0, 1}, `ehebb` = {2}, `oja` = {3}, `pool` = all four.
#
# Let us check the mirror property numerically on random tensors, with the reference forms
# `rules.feedback_term` and `rules.pool_term`.

# %%
gen = torch.Generator().manual_seed(0)
T, n_pre, n_post = 2, 7, 5
B = torch.randn(T, n_pre, n_post, generator=gen)
y_pre, e_pre = torch.rand(T, n_pre, generator=gen), torch.randn(T, n_pre, generator=gen)
y_post, e_post = torch.rand(T, n_post, generator=gen), torch.randn(T, n_post, generator=gen)
for t in FEEDBACK_TERMS:
    G = rules.feedback_term(t.index, B, y_pre, y_post, e_pre, e_post)
    F = rules.pool_term(t.mirrors, B.transpose(1, 2), y_pre, y_post, e_pre, e_post)  # W := B^T
    gap = (G - F.transpose(1, 2)).abs().max().item()
    print(f"G^{t.index} {t.name:15s} = {t.equation:32s} vs (F^{t.mirrors} {TERMS[t.mirrors].name}, W := B^T)^T: "
          f"max difference {gap:.1e}")
print("named feedback rules:", NAMED_FEEDBACK_RULES)

# %% [markdown]
# **Kolen-Pollack.** Take the forward rule $\{F^0, F^3\}$ and the feedback rule `kp` with equal
# coefficients, $\theta_0 = \phi_0 = \eta$ and $\theta_3 = \phi_1 = d$. Transposing the $B$ update,
#
# $$W_\ell \leftarrow (1-d)\,W_\ell - \eta\, e_\ell y_{\ell-1}^\top, \qquad
#   B_\ell^\top \leftarrow (1-d)\,B_\ell^\top - \eta\, e_\ell y_{\ell-1}^\top .$$
#
# The data-driven parts are identical, so they cancel in the difference:
# $W_\ell - B_\ell^\top \leftarrow (1-d)(W_\ell - B_\ell^\top)$, i.e. after $t$ samples
#
# $$W_\ell(t) - B_\ell(t)^\top = (1-d)^t\,\big(W_\ell(0) - B_\ell(0)^\top\big),$$
#
# whatever the data and whatever the errors look like. The random starting difference decays
# away geometrically, and what remains of both matrices is the same learnt part.
#
# **Think!** The difference shrinks for any $d > 0$, but the *angle* between $W_\ell$ and $B_\ell^\top$
# does not care about a common scale. What else must happen for the angle to fall? What if
# $d = 0$?
#
# ### Summary
# * Plastic feedback adds $B_\ell \leftarrow B_\ell + \sum_s \phi_s G^s_\ell$ with four local terms, each the
#   transpose of a forward term with $W$ read as $B^\top$.
# * With the mirrored pseudo-gradient and equal decay on both sides (Kolen-Pollack),
#   $W_\ell - B_\ell^\top$ shrinks by exactly $(1-d)$ per sample.
#
# ### Exercises
# 1. Check the eHebb pair by hand: write $F^2$ with $W := B^\top$ and transpose it.
# 2. Which terms need the error $e_{\ell-1}$ of the layer *below*? For $B_1$ that is the error of the
#    input layer: what does `FEEDBACK_TERMS[2].reads_pre_error` say, and why does the library
#    then compute a synthetic input error $e_0$?

# %% [markdown]
# ## 3 · Live demo: Kolen-Pollack aligns $B^\top$ with $W$
#
# A small network, 784-32-16-10, learns the digits stream online (batch size 1, one pass) with
# the forward rule $\theta_0 = $ `DEMO_LR`, $\theta_3 = $ `DEMO_DECAY`, twice from the same
# start: once with $B$ fixed (plain FA with weight decay) and once with the Kolen-Pollack
# feedback rule $\phi_0 = \theta_0$, $\phi_1 = \theta_3$. `labkit.tutorial.online_learning` with a
# `phi` runs `labkit.learner.online_train_plastic` and records, every `DEMO_EVERY` samples, the
# angle between $W_\ell$ and $B_\ell^\top$, the norm $\|W_\ell - B_\ell^\top\|$ and the teaching-signal
# angles $\alpha_\ell$ to backprop.

# %%
demo_theta = theta_vector({0: DEMO_LR, 3: DEMO_DECAY})
demo = {
    "B fixed": online_learning("fa", demo_theta, DEMO_SAMPLES, trials=DEMO_TRIALS, every=DEMO_EVERY,
                               hidden=DEMO_HIDDEN, phi=phi_vector(None)),
    "Kolen-Pollack": online_learning("fa", demo_theta, DEMO_SAMPLES, trials=DEMO_TRIALS, every=DEMO_EVERY,
                                     hidden=DEMO_HIDDEN, phi={KP: DEMO_LR, B_DECAY: DEMO_DECAY}),
}
steps = demo["Kolen-Pollack"]["steps"]
gap = demo["Kolen-Pollack"]["weight_gap"]  # (trials, steps, layers)
ratio = gap / gap[:, :1]  # ||W - B^T|| relative to the start
theory = (1 - DEMO_DECAY) ** steps
print(f"after {steps[-1]} samples: ||W_l - B_l^T|| / start = "
      + ", ".join(f"{v:.4f}" for v in ratio[:, -1].mean(0)) + f" (layers 1..{ratio.shape[2]}); "
      f"theory (1 - d)^t = {theory[-1]:.4f}")
print(f"largest relative deviation from the theory over all steps, layers and trials: "
      f"{np.abs(ratio / theory[None, :, None] - 1).max():.1e}")
for name, c in demo.items():
    print(f"{name:13s}: angle(W_l, B_l^T) at the end " + ", ".join(f"{a:.0f}" for a in c["weight_angle"][:, -1].mean(0))
          + " deg; alpha_l " + ", ".join(f"{a:.0f}" for a in c["alpha"][:, -1].mean(0))
          + f" deg; test accuracy {c['accuracy'][:, -1].mean():.2f}")

# %%
L = gap.shape[2]
colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, L))
fig, axes = plt.subplots(1, 3, figsize=(16, 4.3), layout="constrained")
for name, style in (("Kolen-Pollack", "-"), ("B fixed", ":")):
    c = demo[name]
    for l in range(L):
        plots.curve_with_band(axes[0], c["steps"], c["weight_angle"][:, :, l], f"{name}: layer {l + 1}",
                              color=colors[l], window=1, linestyle=style)
    for l in range(L - 1):
        plots.curve_with_band(axes[2], c["steps"], c["alpha"][:, :, l], rf"{name}: $\alpha_{{{l + 1}}}$",
                              color=colors[l], window=1, linestyle=style)
axes[0].set_ylabel(r"angle between $W_\ell$ and $B_\ell^\top$ (deg)")
axes[0].set_title(r"$W_\ell$ vs $B_\ell^\top$", fontsize="medium")
axes[1].plot(steps, theory, color="0.8", linewidth=6, label=r"theory $(1-d)^t$")
for l in range(L):  # markers at staggered samples, so that the layers stay visible on top of each other
    plots.curve_with_band(axes[1], steps, ratio[:, :, l], f"layer {l + 1}", color=colors[l], window=1,
                          linewidth=1.0, marker="os^Dv"[l % 5], markersize=4, markevery=(l, L + 2))
axes[1].set_yscale("log")
axes[1].set_ylabel(r"$\|W_\ell - B_\ell^\top\|$ / start")
axes[1].set_title("Kolen-Pollack: the difference decays geometrically", fontsize="medium")
axes[2].set_ylabel(r"teaching-signal angle $\alpha_\ell$ to backprop (deg)")
axes[2].set_title("teaching signals", fontsize="medium")
for ax in (axes[0], axes[2]):
    ax.set_ylim(0, 180)
    ax.axhline(90, color="0.6", linewidth=0.8, linestyle=":")
for ax in axes:
    ax.set_xlabel("training samples")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
fig.suptitle(f"Kolen-Pollack on a {'-'.join(map(str, (784, *DEMO_HIDDEN, 10)))} network, digits, online, "
             rf"{DEMO_TRIALS} trials (mean, 98% band): $\theta_0=\phi_0$={DEMO_LR}, $\theta_3=\phi_1$={DEMO_DECAY}; "
             "dotted: the same run with B fixed", fontsize="medium")
save_figure(fig, FIG_DIR, "05_kp_demo.png")
plt.show()

# %% [markdown]
# The middle panel is the identity of section 2: every layer's $\|W_\ell - B_\ell^\top\|$ lies on the
# line $(1-d)^t$ (to float precision). The left panel shows what that buys: the angle between $W_\ell$
# and $B_\ell^\top$ falls from about $90^\circ$ towards 0, while with $B$ fixed it stays where it
# started. Once $B_\ell^\top \approx W_\ell$ the feedback pathway sends almost backprop's signal, so the
# teaching-signal angles $\alpha_\ell$ (right) fall too. Accuracy is not the point of this demo: a
# decay of 0.01 per sample forgets quickly, and 784-32-16-10 is a small network.
#
# **Think!** The angle falls only once the learnt, common part of $W_\ell$ and $B_\ell^\top$ outweighs
# the decayed random start. Why does the last layer align first, and the first layer last?
#
# ### Summary
# * Kolen-Pollack makes $W_\ell - B_\ell^\top$ decay exactly as $(1-d)^t$, and drives the angle between
#   $W_\ell$ and $B_\ell^\top$ and the teaching-signal angles $\alpha_\ell$ towards 0, with local updates only.
# * With $B$ fixed, the same forward rule leaves $W_\ell$ and $B_\ell^\top$ at about $90^\circ$ on this
#   stream, and its teaching signals no better than random ($\alpha_\ell$ around or above $90^\circ$).
#
# ### Exercises
# 1. Set `DEMO_DECAY = 0` (parameters cell). The difference no longer shrinks; does the angle
#    still fall? Explain with the Think! prompt of section 2.
# 2. Make $\phi_0 \ne \theta_0$ (e.g. `phi={KP: DEMO_LR / 2, B_DECAY: DEMO_DECAY}`). Does the identity
#    break? Does alignment still happen?
# 3. Replace the demo's network by the paper's (`DEMO_HIDDEN = HIDDEN_PAPER`) with
#    $\theta_0 = \phi_0 = 0.01$. How many samples does alignment now need? (The playground of
#    notebook 04 has a slider per $\phi_s$ for such experiments.)

# %% [markdown]
# ## 4 · Meta-learning $\phi$ beside $\theta$
#
# `labkit discover --feedback-rule RULE` makes the feedback plastic during meta-training: every
# episode trains a fresh network online with both updates, and the exact meta-gradient moves
# $\theta$ and $\phi$ together (one Adam optimiser; $\phi$ starts at 0 in every trial, so the first
# episode is plain FA). Only the FA pathway can take it. The runs read here:
#
# | folder | command | what is learnt |
# |---|---|---|
# | `paper/fa_lr` | `labkit discover --rule fa` | $\theta_0$ only, $B$ fixed (notebook 01) |
# | `paper/bp_lr` | `labkit discover --rule bp` | $\theta_0$ only, backprop |
# | `paper/bio` | `labkit discover --rule bio` | $F^{bio}$, $B$ fixed (notebook 02) |
# | `kp_lr` | `labkit discover --rule fa --feedback-rule kp` | $\theta_0$ and $\phi_0, \phi_1$ |
# | `bio_kp` | `labkit discover --rule bio --feedback-rule kp` | $F^{bio}$ and $\phi_0, \phi_1$ |
# | `pool_fbpool` | `labkit discover --rule pool --feedback-rule pool --l1 proximal --lam 0.1` | all ten $\theta_r$ and all four $\phi_s$, under L1 |
#
# (each with `--out results/<folder>`, all at 20 trials x 600 episodes, `--trials 20 --episodes 600`;
# the `paper/` runs are the paper-scale set of notebook 02). The history of a plastic run has the columns `phi_0..phi_3`,
# and its `weight_angle_l` columns measure the angle between $W_\ell$ and the *adapted* $B_\ell^\top$
# at the end of each episode.

# %%
runs = {
    "FA (lr only)": load_or_run("fa_lr", PAPER, SMOKE, rule="fa"),
    "BP (lr only)": load_or_run("bp_lr", PAPER, SMOKE, rule="bp"),
    "F^bio": load_or_run("bio", PAPER, SMOKE, rule="bio"),
    "FA + KP feedback": load_or_run("kp_lr", RESULTS_DIR, SMOKE, rule="fa", feedback_rule="kp"),
    "F^bio + KP feedback": load_or_run("bio_kp", RESULTS_DIR, SMOKE, rule="bio", feedback_rule="kp"),
    "pool + feedback pool": load_or_run("pool_fbpool", RESULTS_DIR, SMOKE, rule="pool", feedback_rule="pool"),
}
plastic = [k for k, r in runs.items() if plots.active_feedback_terms(r.history)]
label = {k: k + (" [tiny fresh run]" if r.source == "tiny" else "") for k, r in runs.items()}
ways = {int(r.config.get("M", plots.DEFAULT_WAYS)) for r in runs.values()}
assert len(ways) == 1, f"runs with different numbers of ways: {ways}"
n_ways = ways.pop()
print("runs with plastic feedback:", plastic)

# %%
rows = {}
for name, run in runs.items():
    h = run.history
    mean, lo, hi = results.final_accuracy(h)  # per trial the mean of the last 10 episodes, then over trials
    n_layers = results.history_n_layers(h)
    angles = [results.final_values(h, f"weight_angle_{l}").mean() for l in range(1, n_layers + 1)]
    phi = results.phi_matrix(run.folder)  # (trials, 4) final phi, None with fixed feedback
    rows[label[name]] = {
        "trials x episodes": run.size,
        "final meta-accuracy, 98% CI": f"{100 * mean:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})",
        "final angle(W_l, B_l^T), layers 1..L (deg)": ", ".join(f"{a:.0f}" for a in angles),
        "final phi (mean over trials)": ("none (backprop sends errors through W^T)" if run.config["feedback"] == "bp"
                                         else "B fixed") if phi is None else ", ".join(
            f"phi_{s}={phi[:, s].mean():.2g}" for s in plots.active_feedback_terms(h)),
    }
table = pd.DataFrame(rows).T
table

# %%
histories = {label[k]: r.history for k, r in runs.items()}
sizes = "; ".join(f"{k}: {r.size}" for k, r in runs.items())
fig, ax = plt.subplots(figsize=(8.5, 4.4), layout="constrained")
plots.plot_meta_curves(histories, "meta_accuracy", ax=ax, window=WINDOW, chance=plots.chance_level(n_ways))
ax.set_title(f"Meta-accuracy with fixed and plastic feedback ({n_ways}-way tasks; mean over trials, 98% band, "
             f"smoothed over {WINDOW} episodes)\n{sizes}", fontsize="small")
save_figure(fig, FIG_DIR, "05_meta_accuracy.png")
plt.show()

# %% [markdown]
# **Think!** Plastic feedback can only help the hidden layers, through better teaching signals.
# Within one episode the network sees $M K = 250$ samples. Compare with the demo of section 3:
# is that enough for Kolen-Pollack to align $B$ with $W$ on the paper's network? What would you
# expect meta-learning to do with $\phi_0$ if it is not?
#
# Next, the meta-learned feedback coefficients $\phi_s$ over the episodes (each plastic run on its
# own axes; the scale of each term differs).

# %%
fig, axes = plt.subplots(1, len(plastic), figsize=(5.6 * len(plastic), 3.8), squeeze=False, layout="constrained")
for ax, name in zip(axes[0], plastic):
    plots.plot_phi_trajectories(runs[name].history, ax=ax)
    ax.set_title(f"{label[name]}\n{runs[name].size}", fontsize="small")
fig.suptitle(r"Meta-learned feedback coefficients $\phi_s$ (mean over trials, 98% band; $\phi$ starts at 0)",
             fontsize="medium")
save_figure(fig, FIG_DIR, "05_phi.png")
plt.show()

# %% [markdown]
# And the angle between $W_\ell$ and $B_\ell^\top$ at the end of each episode, one panel per layer
# (BP is left out: there $B = W^\top$ by definition). With $B$ fixed, FA stays near $90^\circ$ and
# $F^{bio}$ lowers it by moving $W$ (notebook 03); with plastic feedback $B$ can move too.

# %%
angle_runs = {label[k]: runs[k].history for k in runs if k != "BP (lr only)"}
n_layers = results.history_n_layers(runs["FA (lr only)"].history)
fig, axes = plt.subplots(1, n_layers, figsize=(3.5 * n_layers, 3.6), sharey=True, layout="constrained")
for l, ax in enumerate(axes, start=1):
    plots.plot_alignment(angle_runs, ax=ax, layers=[l], window=WINDOW, which="weight_angle")
    ax.set_title(rf"layer {l}: $W_{{{l}}}$ vs $B_{{{l}}}^\top$", fontsize="medium")
    ax.axhline(90, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_ylabel(r"angle $W_\ell$, $B_\ell^\top$ (deg)" if l == 1 else "")
    if l < n_layers:
        ax.get_legend().remove()
fig.suptitle("Angle between forward weights and feedback matrices after each episode (mean over trials, 98% band, "
             f"smoothed over {WINDOW} episodes)", fontsize="medium")
save_figure(fig, FIG_DIR, "05_weight_angles.png")
plt.show()

# %% [markdown]
# How to read these figures once the 20 x 600 runs are in `RESULTS_DIR` (with tiny runs they are
# noise):
#
# * If the plastic runs end *above* their fixed-feedback partners (`kp_lr` vs `fa_lr`, `bio_kp` vs
#   `paper/bio`), learning $B$ helps within an episode; how close do they get to `bp_lr`?
# * $\phi_0$ (Kolen-Pollack) growing away from 0 means the meta-gradient finds it useful to copy the
#   forward update into $B$; a positive $\phi_1$ means it also wants $B$'s random start forgotten.
# * The angle panels tell whether the gain comes with alignment: a falling $W$-vs-$B^\top$ angle in
#   the plastic runs, but not in `fa_lr`, is the signature of Kolen-Pollack at work.
#
# What the committed 20 x 600 runs show (docs/plastic-feedback.md, "Results"): with FA alone,
# plastic feedback lifts the learning-rate-only rule from 23.0% (near the 20% chance level) to
# 56.2%, still below BP's 81.0%. On top of $F^{bio}$ and $F^{pool}$ it *costs* accuracy (64.8%
# against 81.5%; 62.9% against 75.2%), with a much wider spread over trials. Meta-learning keeps $\phi_0 > 0$
# everywhere but makes the decay negative, so $B$ grows, and the $W$-vs-$B^\top$ angles stay
# near $90^\circ$.
#
# **Think!** In `pool_fbpool` all four $\phi_s$ are free. Which of them would you expect to stay
# near 0, and why? Compare with the forward pool, where the L1 penalty of notebook 02 removed
# most terms.
#
# ### Summary
# * $\phi$ is meta-learned beside $\theta$ with the same exact meta-gradient, starting from fixed
#   feedback ($\phi = 0$).
# * The runs are compared by their final meta-accuracy, their $\phi$ trajectories and the angle
#   between $W_\ell$ and the adapted $B_\ell^\top$.
#
# ### Exercises
# 1. Compute a small plastic run yourself (about a minute):
#    `load_or_run("kp_small", RESULTS_DIR, False, rule="fa", feedback_rule="kp", trials=2, episodes=30)`.
#    Does $\phi_0$ move in the first episodes? In which direction?
# 2. Apply a folder's meta-learned $\theta$ and $\phi$ to new tasks with
#    `labkit evaluate --results results/kp_lr` (it reads $\phi$ too), and compare with `fa_lr`.
# 3. Try the other named feedback rules, `--feedback-rule ehebb` and `--feedback-rule oja`, with
#    `--rule fa`. Which term, if any, does meta-learning keep?

# %% [markdown]
# ## Summary
#
# * **Weight transport** is what FA avoids with a random $B$; with $B$ fixed, the forward weights
#   must do all the aligning, and on a short online stream they hardly do.
# * **Plastic feedback** lets $B$ learn by four local terms, $B_\ell \leftarrow B_\ell + \sum_s \phi_s G^s_\ell$,
#   each the transpose of a forward term with $W$ read as $B^\top$.
# * **Kolen-Pollack** (the mirrored pseudo-gradient plus equal decay) makes
#   $W_\ell - B_\ell^\top = (1-d)^t (W_\ell(0) - B_\ell(0)^\top)$: the live demo follows this to float
#   precision, and the angles between $W_\ell$ and $B_\ell^\top$, and the teaching-signal angles, fall.
# * **Meta-learning** $\phi$ beside $\theta$ (`labkit discover --feedback-rule kp|ehebb|oja|pool`)
#   asks whether, and how much, plastic feedback pays off in the few-shot online setting of the
#   paper; the figures above compare it with FA, backprop and $F^{bio}$.
#
# Figures written: `05_kp_demo.png`, `05_meta_accuracy.png`, `05_phi.png`, `05_weight_angles.png`
# in `FIG_DIR`.
