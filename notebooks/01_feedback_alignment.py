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
# # 01 · Feedback alignment: learning without weight transport
#
# *Tutorial 1 of `labkit`, reproducing N. Shervani-Tabar & R. Rosenbaum, "Meta-learning
# biologically plausible plasticity rules with random feedback pathways",
# Nature Communications 14, 1805 (2023), [doi:10.1038/s41467-023-37562-1](https://doi.org/10.1038/s41467-023-37562-1).*
#
# Backpropagation trains a deep network by sending the output error backwards through the
# *transposes of the forward weights*. A neuron in the brain has no access to the strength of
# the synapses that other neurons make downstream, so this "weight transport" is widely held to
# be biologically implausible. **Feedback alignment** (FA) sends the error back through fixed
# *random* matrices instead, and still learns. The paper starts from FA's weak spot: it learns
# slowly when a deep network sees every sample once (online learning, batch size 1).
#
# **Objectives.** After this notebook you can
#
# 1. state the weight-transport problem and write the backward pass of backprop (BP), feedback
#    alignment (FA) and direct feedback alignment (DFA);
# 2. train a 5-layer network *online* with each of them and compare their learning curves
#    (the paper's Fig. 1);
# 3. measure how far FA's teaching signals are from backprop's, with the alignment angles
#    $\alpha_\ell$;
# 4. read the paper's Fig. 3: meta-learning only the learning rate $\theta_0$ cannot rescue FA,
#    which motivates meta-learning a whole plasticity rule (notebooks 02 and 03).
#
# Expensive meta-training runs are not repeated here: the notebook reads the committed result
# folders in `RESULTS_DIR` (`paper/fa_lr`, `paper/bp_lr`, `paper/dfa_lr`, and `bio` when
# present). If a folder is missing, or in smoke mode, it runs a *tiny* meta-training afresh so
# that every cell still works, and says so; tiny runs show the mechanics only, their curves are
# noise. The helpers the notebooks share (`load_or_run`, `online_learning`, `save_figure`) live
# in `labkit.tutorial`.

# %% Setup: imports, seeds, threads
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from labkit import plots, results
from labkit.data import DatasetNotFoundError, online_stream
from labkit.feedback import backward, init_feedback
from labkit.meta import HIDDEN_PAPER, trial_generators
from labkit.metrics import vector_angle
from labkit.networks import forward, init_weights
from labkit.tutorial import figure_folder, load_or_run, online_learning, save_figure, setup_notebook, theta_vector

setup_notebook(seed=0)  # seeds (and threads), set once
PATHWAYS = {"BP": "bp", "FA": "fa", "DFA": "dfa"}  # label -> feedback pathway

# %% tags=["parameters"]
SMOKE = False  # True: tiny runs only (for tests); False: full online runs, read RESULTS_DIR when present
RESULTS_DIR = "../results"
FIG_DIR = "../figures"
DATASET = "mnist"  # online-learning data; falls back to the bundled "digits" if MNIST is not on disk
DATA_ROOT = None  # folder holding MNIST/raw/ (default: $LABKIT_DATA, else ../data)
N_SAMPLES = 5000  # length of the online stream (capped at the training-set size: one pass)
TRIALS = 3  # independent networks per pathway
LR = 0.01  # theta_0, the same learning rate for BP, FA and DFA
EVERY = 50  # evaluate on held-out images every EVERY samples
N_EVAL = 1000  # held-out images

# %%
if SMOKE:
    DATASET, N_SAMPLES, EVERY, N_EVAL = "digits", 100, 10, 200
FIG_DIR = figure_folder(FIG_DIR, SMOKE)  # a smoke run never writes into the committed figures/
PAPER = f"{RESULTS_DIR}/paper"  # the paper-scale runs: 20 trials x 600 episodes each
print(f"SMOKE={SMOKE}: stream of up to {N_SAMPLES} samples, {TRIALS} trials, learning rate {LR}; figures -> {FIG_DIR}")

# %% [markdown]
# ## 1 · The weight-transport problem
#
# The network has $L = 5$ weight layers, sizes 784-170-130-100-70-$n_L$, no biases, softplus
# hidden units $\sigma(z) = \log(1+e^{\beta z})/\beta$ with $\beta = 10$, and a softmax output:
#
# $$z_\ell = W_\ell\, y_{\ell-1}, \qquad y_\ell = \sigma(z_\ell), \qquad y_0 = x .$$
#
# With cross-entropy loss the output error is $e_L = \mathrm{softmax}(z_L) - \mathrm{onehot}(\text{label})$.
# The *teaching signal* of a hidden layer comes from the layer above:
#
# | pathway | teaching signal $e_\ell$ ($\ell < L$) | needs |
# |---|---|---|
# | backprop (BP) | $(W_{\ell+1}^\top e_{\ell+1}) \odot \sigma'(z_\ell)$ | the current forward weights, transported backwards |
# | feedback alignment (FA) | $(B_{\ell+1}\, e_{\ell+1}) \odot \sigma'(z_\ell)$ | a fixed random $B_{\ell+1}$ of the shape of $W_{\ell+1}^\top$ |
# | direct FA (DFA) | $(D_\ell\, e_L) \odot \sigma'(z_\ell)$ | a fixed random $D_\ell$ from the output to every layer |
#
# Every pathway then changes the weights by the same *pseudo-gradient* term,
# $\Delta W_\ell = -\theta_0\, e_\ell\, y_{\ell-1}^\top$ (term $F^0$ of the paper's pool, with
# $\theta_0$ the learning rate). Only BP makes this the true gradient. FA works because the
# forward weights come to *align* with the feedback, $W_\ell \to$ roughly $B_\ell^\top$, so that
# the random feedback becomes useful: that takes time.
#
# Let us look at the three pathways on one fresh network and one sample.

# %%
sizes = (784, *HIDDEN_PAPER, 10)
gen = [trial_generators(0, 0)[1]]  # one trial's weight generator
Ws = init_weights(sizes, gen)
x = torch.rand(1, 784) * 0.5
onehot = torch.nn.functional.one_hot(torch.tensor([3]), 10).float()
_, ys = forward(Ws, x)
e_L = ys[-1] - onehot
teaching = {}
for label, kind in PATHWAYS.items():
    Bs = init_feedback(kind, sizes, [trial_generators(0, 0)[1]])
    teaching[label] = backward(kind, Ws, Bs, ys, e_L, need_e0=False)
    shapes = [tuple(B.shape[1:]) for B in Bs] or ["none: uses W^T"]
    print(f"{label:3s} feedback matrices: {shapes}")
for label in ("FA", "DFA"):
    angles = [float(vector_angle(teaching[label][l], teaching["BP"][l])) for l in range(1, len(Ws))]
    print(f"angle between {label}'s and BP's teaching signal, layers 1..4: "
          + ", ".join(f"{a:.0f} deg" for a in angles))

# %% [markdown]
# At initialisation the random pathways send signals at about 90° to backprop's: in a
# high-dimensional space a random direction is almost orthogonal to any given one. A
# teaching signal at 90° carries no information about the gradient, so learning in the hidden
# layers must wait until the weights have aligned.
#
# **Think!** The last layer ($\ell = L$) always receives the true error $e_L$. What can FA
# learn before any alignment has happened?
#
# ### Summary
# * Backprop's teaching signals need the transposed forward weights (weight transport).
# * FA and DFA replace them with fixed random matrices; initially their signals are about
#   orthogonal to backprop's.
#
# ### Exercises
# 1. Repeat the cell with a 1-hidden-layer network `sizes = (784, 100, 10)`. How do the angles
#    depend on depth?
# 2. Draw `B` with 10 times larger entries. Does the angle change? Why not?

# %% [markdown]
# ## 2 · Online learning: FA needs many samples (Fig. 1)
#
# Now we train fresh networks online: one pass over a shuffled stream of images, batch size
# 1, one update after every sample, and we test on held-out images every `EVERY` samples. The
# paper uses MNIST; when MNIST is not on disk we fall back to scikit-learn's bundled 8x8 digits
# (upsampled to 28x28; 1797 images, of which 300 are held out, so at most 1497 samples in one pass). All three pathways
# use the same learning rate $\theta_0$ = `LR`, and trial $i$ of every pathway starts from the same
# $W$ and sees the same stream.

# %%
root = DATA_ROOT or os.environ.get("LABKIT_DATA") or "../data"
used = DATASET
if used != "digits":
    try:
        online_stream(used, root, N_EVAL)  # cached: the call below reuses it
    except DatasetNotFoundError as err:
        print(f"{used} not found, using the bundled digits instead.\n  ({err})\n"
              f"  To get it, run from the repository root (needs internet):\n"
              f"    python -c \"from labkit.data import load_dataset as f; f('{used}', 'data', download=True); "
              f"f('{used}', 'data', split='test', download=True)\"\n"
              "  or point DATA_ROOT / $LABKIT_DATA at a folder that already holds MNIST/raw/.")
        used = "digits"
n_eval = min(N_EVAL, 300) if used == "digits" else N_EVAL  # digits has one split: hold out at most 300 of 1797
x_stream, y_stream, x_eval, y_eval, n_classes = online_stream(used, root, n_eval)
n = min(N_SAMPLES, len(x_stream))
sizes = (784, *HIDDEN_PAPER, n_classes)
L = len(sizes) - 1
print(f"{used}: stream of {n} of {len(x_stream)} training images, {len(x_eval)} held-out test images, "
      f"network {'-'.join(map(str, sizes))}")


def online(feedback, theta):
    """Learning curves of TRIALS fresh networks of `sizes` trained online on the stream above, with the
    rule made of the terms r where theta_r != 0 (see labkit.tutorial.online_learning)."""
    return online_learning(feedback, theta, n, trials=TRIALS, every=EVERY, dataset=used, data_root=root,
                           hidden=sizes[1:-1], n_eval=n_eval)


lr_only = theta_vector({0: LR})  # (10,) coefficients: theta_0 = LR, the other terms 0
curves = {}
for label, kind in PATHWAYS.items():
    t0 = time.perf_counter()
    curves[label] = online(kind, lr_only)
    print(f"{label:3s}: final test accuracy {curves[label]['accuracy'][:, -1].mean():.2f} "
          f"({time.perf_counter() - t0:.1f} s)")

# %% [markdown]
# If a meta-learned bio rule is available (`RESULTS_DIR/paper/bio/theta.json`, written by
# `labkit discover --rule bio`), we add it: the same FA network and stream, but the rule
# $\Delta W_\ell = \theta_0 F^0 + \theta_2 F^2 + \theta_9 F^9$ with the mean meta-learned
# coefficients (notebook 02 explains where it comes from).

# %%
bio_folder = Path(PAPER) / "bio"
if not SMOKE and (bio_folder / "theta.json").is_file():
    per_trial = results.theta_matrix(bio_folder)  # (trials, 10) final theta, diverged trials left out
    theta_bio = per_trial.mean(axis=0)
    print(f"bio rule from {bio_folder} (mean of {len(per_trial)} trials): "
          + ", ".join(f"theta_{r}={v:.3g}" for r, v in enumerate(theta_bio) if v != 0))
    curves["FA + bio rule"] = online("fa", theta_bio)
    print(f"FA + bio rule: final test accuracy {curves['FA + bio rule']['accuracy'][:, -1].mean():.2f}")
else:
    print(f"no meta-learned bio rule at {bio_folder}" + (" (SMOKE mode)" if SMOKE else "")
          + "; produce one with `labkit discover --rule bio --out results/paper/bio`.")

# %%
fig, ax = plt.subplots(figsize=(6.8, 4.2), layout="constrained")
plots.plot_online_curves({k: (c["steps"], c["accuracy"]) for k, c in curves.items()}, ax=ax,
                         chance=plots.chance_level(next(iter(curves.values()))["n_classes"]))
ax.set_ylim(0, 1)
ax.set_title(f"Online learning on {used}, batch size 1, one pass ({TRIALS} trials, mean and 98% band),\n"
             rf"learning rate $\theta_0$ = {LR}; test on {len(x_eval)} held-out images every {EVERY} samples",
             fontsize="medium")
save_figure(fig, FIG_DIR, "01_online_learning.png")
plt.show()

# %% [markdown]
# Backprop starts learning at once. FA stays near chance for a long stretch of the stream
# (the paper: ~2000 MNIST samples) and then catches up only slowly. DFA, whose errors skip the
# layers in between, is also slow here; in meta-learning (section 4, Supp. Fig. S1) the paper
# finds it better than FA but below BP.
#
# **Think!** Why does FA learn slowly online? Consider (i) what the hidden layers receive
# before $W$ has aligned with $B^\top$, (ii) how much each single sample can move $W$ at a
# learning rate that stays stable, and (iii) how alignment has to propagate down through four
# hidden layers.
#
# ### Summary
# * Online, with one pass over the data, BP learns at once while FA (and DFA) lag far behind
#   with the same learning rate.
# * A meta-learned plasticity rule (when available) closes most of the gap while keeping the
#   random feedback.
#
# ### Exercises
# 1. Raise `LR` to 0.03 and 0.1 (parameters cell). Does FA get faster, or unstable?
# 2. Use a shallower network (`HIDDEN_PAPER` -> `(100,)`). How does FA's lag change with depth?
# 3. Run with `N_SAMPLES` = 200 and `EVERY` = 10: what happens in the first few hundred samples?

# %% [markdown]
# ## 3 · FA's teaching signals stay far from backprop's
#
# `learning_curve` also records, at every evaluation, the alignment angle
# $\alpha_\ell$ ($\ell = 1..L-1$): the angle between the teaching signal $e_\ell$ sent through the
# feedback pathway and the one sent through the current $W^\top$, both from the same output
# error, averaged over the held-out batch. For backprop $\alpha_\ell = 0$ by construction.

# %%
shown = [k for k in curves if k != "BP"]
fig, axes = plt.subplots(1, L - 1, figsize=(3.4 * (L - 1), 3.4), sharey=True, layout="constrained")
for l, ax in enumerate(axes):
    plots.plot_online_curves({k: (curves[k]["steps"], curves[k]["alpha"][:, :, l]) for k in shown}, ax=ax,
                             ylabel="alignment angle (deg)" if l == 0 else "")
    ax.axhline(90, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(0, 150)
    ax.set_title(rf"layer {l + 1}: $\alpha_{{{l + 1}}}$", fontsize="medium")
fig.suptitle(f"Teaching-signal angle to backprop during online learning on {used} "
             f"({TRIALS} trials, {n} samples; BP: 0 by construction)", fontsize="medium")
save_figure(fig, FIG_DIR, "01_alignment_online.png")
plt.show()
for k in shown:
    print(f"{k:14s} alpha after {n} samples: "
          + ", ".join(f"{a:.0f}" for a in np.nanmean(curves[k]["alpha"][:, -1], axis=0)) + " deg")

# %% [markdown]
# FA's teaching signals start near 90° and improve only slowly: for most of the stream the
# hidden layers learn from signals that are barely better than random.
#
# **Think!** $\alpha_\ell$ compares $B e$ with $W^\top e$. Which of the two changes during learning
# under FA, and what does that imply for how alignment arises?
#
# ### Summary
# * Alignment angles measure how useful the random feedback is; under FA they stay large
#   throughout a short online stream.
#
# ### Exercises
# 1. Compute the angle between $W_\ell$ and $B_\ell^\top$ directly with
#    `labkit.metrics.weight_angles` after training. Does it follow $\alpha_\ell$?
# 2. Why can DFA's $\alpha_\ell$ be small even though $D_\ell$ does not have the shape of any $W^\top$?

# %% [markdown]
# ## 4 · Meta-learning only the learning rate (Fig. 3)
#
# Is FA just using the wrong learning rate? The paper meta-learns $\theta_0$ alone: every
# episode draws a 5-way task (K = 50 training and Q = 10 query images per class), re-initialises
# $W$ and $B$, trains online on the 250 training images with $\Delta W = -\theta_0 e\,y^\top$, and
# takes an Adam step on $\theta_0$ against the query loss, with the exact gradient through the
# whole episode. We compare FA, BP and DFA. The committed runs are part of the paper-scale set
# (20 trials x 600 episodes, all made by one commit; `scripts/paper_scale.py`), e.g.
#
# ```
# labkit discover --rule fa  --trials 20 --episodes 600 --workers 2 --compile on --out results/paper/fa_lr
# labkit discover --rule bp  --trials 20 --episodes 600 --workers 2 --compile on --out results/paper/bp_lr
# labkit discover --rule dfa --trials 20 --episodes 600 --workers 2 --compile on --out results/paper/dfa_lr
# ```

# %%
meta = {
    "FA": load_or_run("fa_lr", PAPER, SMOKE, rule="fa"),
    "BP": load_or_run("bp_lr", PAPER, SMOKE, rule="bp"),
    "DFA": load_or_run("dfa_lr", PAPER, SMOKE, rule="dfa"),
}
for label, run in meta.items():
    mean, lo, hi = results.final_accuracy(run.history)  # per trial the mean of the last 10 episodes
    theta0 = run.theta["mean"].get("theta_0", float("nan"))
    print(f"{label:3s} ({run.source:7s}, {run.size}): meta-accuracy over the last 10 episodes "
          f"{100 * mean:.1f}% (98% CI {100 * lo:.1f}-{100 * hi:.1f}%), final theta_0 = {theta0:.4f}")

# %%
histories = {label: run.history for label, run in meta.items()}
sources = {run.source for run in meta.values()}
origin = "committed results" if sources == {"results"} else (
    "TINY runs computed afresh (mechanics only)" if sources == {"tiny"} else "results + tiny runs")
size = "; ".join(f"{k}: {r.size}" for k, r in meta.items())
colors = dict(zip(meta, sns.color_palette("deep", len(meta))))  # the palette plots uses

fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), layout="constrained")
plots.plot_meta_curves(histories, "meta_accuracy", ax=axes[0])
axes[0].set_title("meta-accuracy (query, after adaptation)", fontsize="medium")
for label, df in histories.items():
    eps, vals, _ = results.pivot_trials(df, "theta_0")
    plots.curve_with_band(axes[1], eps, vals, label, color=colors[label], window=1)
axes[1].set_xlabel("episode")
axes[1].set_ylabel(r"$\theta_0$ (learning rate)")
axes[1].legend(fontsize="small")
axes[1].set_title(r"meta-learned learning rate $\theta_0$", fontsize="medium")
plots.plot_alignment({k: histories[k] for k in ("FA", "DFA")}, ax=axes[2])
axes[2].set_title(r"alignment angles $\alpha_\ell$ (BP: 0 by construction)", fontsize="medium")
fig.suptitle(f"Meta-learning the learning rate only, {origin}: {size}\n"
             "mean over trials, 98% bootstrap band, curves smoothed over 10 episodes", fontsize="medium")
save_figure(fig, FIG_DIR, "01_fig3_lr_only.png")
plt.show()

# %% [markdown]
# In the paper (EMNIST, 600 episodes) the meta-learned learning rate converges within ~100
# episodes, and the meta-accuracy plateaus at ~25% for FA against ~70% for BP; DFA ends in
# between. FA's alignment angles stay poor: no learning rate makes the random feedback useful
# within 250 samples. The committed digits runs agree for FA (about 23%, where chance is 20%)
# and BP (about 81%), but not for DFA, which ends *below* FA, at chance (about 21%): Supp. Fig. S1
# does not reproduce here (docs/reproduction.md explains why; the printout above gives the exact
# numbers).
#
# **Think!** Why is $\theta_0$ alone not enough? A learning rate scales the update
# $-\theta_0 e_\ell y_{\ell-1}^\top$ but cannot change its *direction*: with $e_\ell$ far from
# backprop's, a bigger step moves $W$ faster in a poor direction (and too big a step makes
# the online dynamics unstable). What kind of extra term could change the direction, for
# example by pushing $W_\ell$ towards $B_\ell^\top$?
#
# ### Summary
# * Meta-learning the learning rate tunes FA as well as it can be tuned, and FA still stays far
#   below backprop in the online, little-data regime.
# * Improving FA needs rules whose updates point elsewhere: notebook 02 meta-learns a rule
#   from a pool of ten plasticity terms.
#
# ### Exercises
# 1. Re-run `load_or_run("fa_lr_long", RESULTS_DIR, SMOKE, rule="fa", episodes=50, trials=2)` (a minute or so)
#    and compare with the tiny run. Does $\theta_0$ settle?
# 2. Start $\theta_0$ from 0.01 instead of 0.001 (`theta0=0.01`). Does it converge to the same value?

# %% [markdown]
# ## Summary
#
# * **Weight transport**: backprop's teaching signals use $W^\top$; FA and DFA use fixed random
#   feedback instead.
# * **Online learning** (batch size 1, one pass) is where FA hurts most: with the same learning
#   rate backprop learns at once while FA waits for its weights to align (Fig. 1).
# * FA's **teaching signals** stay at large angles to backprop's for a long time.
# * **Tuning the learning rate** by meta-learning does not close the gap (Fig. 3): the update
#   direction, not its size, is the problem. Next: meta-learning the plasticity rule itself
#   (notebook 02), and what the discovered terms do (notebook 03).
#
# Figures written: `01_online_learning.png`, `01_alignment_online.png`, `01_fig3_lr_only.png`
# in `FIG_DIR`.
