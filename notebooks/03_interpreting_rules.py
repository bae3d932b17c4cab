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
# # 03 · Interpreting the discovered rule: why $F^{bio}$ works
#
# *Tutorial 3 of `labkit`, reproducing N. Shervani-Tabar & R. Rosenbaum, "Meta-learning
# biologically plausible plasticity rules with random feedback pathways",
# Nature Communications 14, 1805 (2023), [doi:10.1038/s41467-023-37562-1](https://doi.org/10.1038/s41467-023-37562-1).*
#
# Notebook 02 found that an L1-penalised search over ten plasticity terms keeps three:
#
# $$F^{bio} = \theta_0 \underbrace{(-e_l y_{l-1}^\top)}_{\text{pseudo-gradient}}
#   + \theta_2 \underbrace{(-e_l e_{l-1}^\top)}_{\text{eHebb}}
#   + \theta_9 \underbrace{(y_l y_{l-1}^\top - y_l y_l^\top W_l)}_{\text{Oja}} .$$
#
# Here we take the rule apart. The two extra terms help in two different ways.
#
# **Objectives.** After this notebook you can
#
# 1. show that the error-based Hebbian term (eHebb) *aligns* the teaching signals with
#    backprop's (paper, Fig. 5), and explain why from a linear network;
# 2. reproduce the logic of the paper's Table 1: giving one layer the eHebb term improves the
#    alignment of the feedback that passes through that layer;
# 3. measure how much of the output error's information reaches each layer (Fig. 6);
# 4. show that Oja's term helps *without* improving alignment: it makes the forward weights
#    more orthonormal (Figs. 7-8).
#
# As in notebook 02, the meta-training curves come from the committed result folders in
# `RESULTS_DIR/paper` (`ehebb`, `bio`, `oja`, `fa_lr`: each 20 trials x 600 episodes, all made by
# one commit) when present; in smoke mode or when a folder is
# missing, a *tiny* run is computed afresh (the printout says which). The other experiments
# (Table 1, information flow, the linear check) are computed live, at a small size in smoke mode.
# The helpers the notebooks share (`load_or_run`, `save_figure`) live in `labkit.tutorial`; the
# building blocks of the live experiments (`fresh_tasks`, `information_flow`) in `labkit.analysis`,
# and the end-of-run averages (`final_values`) in `labkit.results`.

# %% Setup: imports, seeds, threads, helpers
import itertools
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from labkit import plots, results
from labkit.analysis import fresh_tasks, information_flow, task_theta
from labkit.learner import online_train
from labkit.metrics import alignment_angles, query_loss_and_accuracy, weight_angles
from labkit.rules import make_rule
from labkit.stats import bootstrap_ci
from labkit.tutorial import figure_folder, load_or_run, save_figure, setup_notebook, theta_vector

setup_notebook(seed=0)  # seeds (and threads), set once
pd.set_option("display.precision", 3)
WINDOW = 10  # episodes of moving-average smoothing, as in the paper's figures


def final_mean(run, column):
    """Mean over the run's trials of `column` averaged over each trial's last 10 episodes."""
    return results.final_values(run.history, column).mean()


def per_layer_figure(runs, plot, layers, title, filename):
    """One panel per layer, the runs compared inside each panel."""
    layers = list(layers)
    ncols = len(layers) if len(layers) <= 4 else 3
    nrows = -(-len(layers) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, l in zip(axes.flat, layers):
        plot(runs, ax=ax, layers=[l], window=WINDOW)
        ax.set_title(f"layer {l}", fontsize="small")
    fig.suptitle(title, fontsize="small")
    save_figure(fig, FIG_DIR, filename)


# %% tags=["parameters"]
SMOKE = False  # True: tiny fresh runs and small live experiments (for tests)
RESULTS_DIR = "../results"
FIG_DIR = "../figures"
DATASET = "digits"  # data of the live experiments (sections 3-4); "digits" needs no download
N_TASKS = 20  # new tasks (fresh networks) in the live experiments of sections 3-4
K_LIVE = 50  # training images per class in those tasks
N_DRAWS = 256  # random linear networks averaged over in section 2

# %%
if SMOKE:  # small live experiments
    N_TASKS, K_LIVE, N_DRAWS = min(N_TASKS, 4), min(K_LIVE, 10), min(N_DRAWS, 32)
FIG_DIR = figure_folder(FIG_DIR, SMOKE)  # a smoke run never writes into the committed figures/
PAPER = Path(RESULTS_DIR) / "paper"  # the paper-scale runs: 20 trials x 600 episodes each
print(f"live experiments: {N_TASKS} tasks, K = {K_LIVE}, dataset {DATASET}; linear check: {N_DRAWS} draws; "
      f"figures -> {FIG_DIR}")

# %% [markdown]
# ## 1 · eHebb aligns teaching signals (Fig. 5)
#
# Meta-learning only $\{\theta_0, \theta_2\}$ gives the rule $F^{eHebb}$. We compare it with FA
# (learning rate only) and with $F^{bio}$. Besides the meta-accuracy we plot the alignment
# angles $\alpha_l$: the angle between the teaching signal $e_l$ sent through the random
# feedback $B$ and the one backprop would send through the current $W^\top$, from the same
# output error (on the query batch after adaptation; $90^\circ$ = unrelated, $0^\circ$ = backprop).

# %%
ehebb = load_or_run("ehebb", PAPER, SMOKE, rule="ehebb")
fa = load_or_run("fa_lr", PAPER, SMOKE, rule="fa")
bio = load_or_run("bio", PAPER, SMOKE, rule="bio")
fig5 = {"F^eHebb": ehebb, "FA": fa, "F^bio": bio}

fig, ax = plt.subplots(figsize=(6.4, 4.2))
plots.plot_meta_curves({k: r.history for k, r in fig5.items()}, "meta_accuracy", ax=ax, window=WINDOW)
ax.set_title("Meta-accuracy (Fig. 5)\n" + "; ".join(f"{k}: {r.size}" for k, r in fig5.items()), fontsize="small")
save_figure(fig, FIG_DIR, "03_fig5_meta_accuracy.png")

L = ehebb.history.filter(like="ortho_").shape[1]
per_layer_figure({k: r.history for k, r in fig5.items()}, plots.plot_alignment, range(1, L),
                 "Alignment angle per layer (Fig. 5): " + "; ".join(f"{k} {r.size}" for k, r in fig5.items()),
                 "03_fig5_alignment.png")

# %%
pd.DataFrame(
    {name: [final_mean(run, "meta_accuracy")] + [final_mean(run, f"alpha_{l}") for l in range(1, L)]
     for name, run in fig5.items()},
    index=["meta-accuracy"] + [f"alpha_{l} (deg)" for l in range(1, L)],
).rename_axis("mean of the last 10 episodes")

# %% [markdown]
# In the paper, $F^{eHebb}$ beats FA by far but stays below $F^{bio}$, and it has the smallest
# alignment angles of all rules: the eHebb term is what brings the random-feedback teaching
# signals close to backprop's.
#
# **Think!** $F^{eHebb}$ aligns *better* than $F^{bio}$ yet learns *worse*. What does that tell
# you about alignment as an explanation of performance?
#
# **Summary.** Adding the eHebb term to FA lowers the alignment angles in every hidden layer
# and raises the meta-accuracy.
#
# **Exercises.** 1. Which layer's angle falls first during meta-training, the one nearest the
# output or the one nearest the input? 2. Plot `which="weight_angle"` with `plots.plot_alignment`:
# the angle between $W_l$ and $B_l^\top$ themselves.

# %% [markdown]
# ## 2 · Why: in a linear network eHebb pushes $W_l$ towards $B_l^\top$
#
# In a linear network ($\sigma(z) = z$, so $\sigma' = 1$) the feedback pass is
# $e_{l-1} = B_l e_l$ exactly. The eHebb update therefore is
#
# $$\Delta W_l = -\theta_2\, e_l e_{l-1}^\top = -\theta_2\, e_l e_l^\top B_l^\top ,
# \qquad \mathbb{E}[\Delta W_l] = -\theta_2\, C_l B_l^\top, \quad C_l = \mathbb{E}[e_l e_l^\top].$$
#
# When the errors reaching layer $l$ are white ($C_l \propto I$), the average eHebb update
# is proportional to $B_l^\top$: with $\theta_2 < 0$ it moves $W_l$ *towards* its own feedback
# matrix, and $W_l^\top e_l$ (backprop) becomes more like $B_l e_l$ (FA): alignment.
#
# Let us check it numerically with a few lines of torch: a linear network with random $W$ and
# $B$, random Gaussian inputs and targets, and the output error $e_L = y_L - t$.

# %%
lin_sizes = [100, 80, 60, 40, 10]  # n_0 .. n_L
n_layers = len(lin_sizes) - 1


def draw_linear(R, gen):
    """R random linear networks: W_l (R, n_l, n_{l-1}) and B_l (R, n_{l-1}, n_l), scaled 1/sqrt(fan_in)."""
    Ws = [torch.randn(R, lin_sizes[l], lin_sizes[l - 1], generator=gen) / lin_sizes[l - 1] ** 0.5
          for l in range(1, n_layers + 1)]
    Bs = [torch.randn(R, lin_sizes[l - 1], lin_sizes[l], generator=gen) / lin_sizes[l] ** 0.5
          for l in range(1, n_layers + 1)]
    return Ws, Bs


def linear_errors(Ws, Bs, N, gen):
    """Forward N random inputs through the linear nets, then send e_L = y_L - t back through B."""
    R = Ws[0].shape[0]
    y = torch.randn(R, N, lin_sizes[0], generator=gen)  # inputs
    for W in Ws:
        y = y @ W.transpose(1, 2)  # y_l = W_l y_{l-1}  (no activation)
    es = [None] * (n_layers + 1)
    es[n_layers] = y - torch.randn(R, N, lin_sizes[-1], generator=gen)  # e_L = y_L - target
    for l in range(n_layers, 0, -1):
        es[l - 1] = es[l] @ Bs[l - 1].transpose(1, 2)  # e_{l-1} = B_l e_l  (sigma' = 1)
    return es


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


gen = torch.Generator().manual_seed(0)
Ws_lin, Bs_lin = draw_linear(1, gen)
N = 64 * N_DRAWS
es = linear_errors(Ws_lin, Bs_lin, N, gen)
rows = []
for l in range(1, n_layers + 1):
    M = (es[l][0].T @ es[l - 1][0]) / N  # estimate of E[e_l e_{l-1}^T]   (n_l x n_{l-1})
    C = (es[l][0].T @ es[l][0]) / N  # estimate of C_l = E[e_l e_l^T]
    Bt = Bs_lin[l - 1][0].T
    rows.append((l, cosine(M, Bt), cosine(M, C @ Bt), cosine(C, torch.eye(len(C)))))
fixed_net = pd.DataFrame(rows, columns=["layer l", "cos(E[e_l e_{l-1}^T], B_l^T)",
                                        "cos(E[e_l e_{l-1}^T], C_l B_l^T)", "cos(C_l, I)"]).set_index("layer l")
print(f"one fixed linear network {'-'.join(map(str, lin_sizes))}, {N} random samples:")
fixed_net

# %% [markdown]
# The identity $\mathbb{E}[e_l e_{l-1}^\top] = C_l B_l^\top$ holds exactly (middle column
# $\approx 1$). For the output layer the error is nearly white and the cosine with
# $B_L^\top$ is high (about 0.9 here). Deeper down it is not: $e_l = B_{l+1} \cdots B_L e_L$ lives in a
# subspace of dimension at most $n_L$, so $C_l$ is far from $\propto I$ for *one fixed* set of
# feedback matrices.
#
# The statement "$\mathbb{E}[e_l e_{l-1}^\top \mid B_l] \propto B_l^\top$" conditions on the
# feedback *of layer $l$ only*. The matrices downstream ($B_{l+1}, \ldots, B_L$, and $W$) are
# random and independent of $B_l$, and averaging over them whitens $C_l$. We hold $B_l$ fixed and
# average over `N_DRAWS` random draws of everything else:

# %%
rows = []
for l in range(1, n_layers + 1):
    Ws_r, Bs_r = draw_linear(N_DRAWS, gen)
    Bs_r[l - 1] = Bs_lin[l - 1].expand(N_DRAWS, -1, -1)  # the same B_l in every draw
    es = linear_errors(Ws_r, Bs_r, 64, gen)
    M = torch.einsum("rni,rnj->ij", es[l], es[l - 1]) / (64 * N_DRAWS)
    rows.append((l, cosine(M, Bs_lin[l - 1][0].T)))
given_B = pd.DataFrame(rows, columns=["layer l", "cos(E[e_l e_{l-1}^T | B_l], B_l^T)"]).set_index("layer l")
given_B

# %% [markdown]
# Now the cosines are close to 1 in every layer (how close depends on `N_DRAWS`): on
# average over networks, eHebb is a push of $W_l$ along $\pm B_l^\top$, the direction that makes
# the weights agree with the feedback.
#
# **Think!** The sign of the push is set by $\theta_2$. What sign should meta-learning find for
# $\theta_2$ with the convention $F^2 = -e_l e_{l-1}^\top$? Check it against the $\theta_2$ of the
# `ehebb` and `bio` runs: `ehebb.theta["mean"]`.
#
# **Summary.** In a linear network the expected eHebb update of layer $l$ is
# $-\theta_2 C_l B_l^\top$; averaged over the rest of the network it is proportional to
# $B_l^\top$. eHebb is a local, biologically plausible way to make the forward weights learn
# the transpose of the feedback weights.
#
# **Exercises.** 1. Replace the Gaussian targets by random one-hot vectors: does the output layer
# stay aligned? 2. Make the output layer wider (`lin_sizes[-1] = 40`) and redo the fixed-network
# table: why do the deep layers' cosines rise?

# %% [markdown]
# ## 3 · Table 1: eHebb layer by layer
#
# The paper's Table 1 uses a 3-layer network 784-130-70-$n_{out}$ and gives the eHebb term to
# some layers only. `labkit.rules.make_rule` accepts one term list per layer, e.g.
# `[[0, 2], [0], [0]]` = eHebb in layer 1 only. For each of the $2^3 = 8$ choices we train
# **the same** fresh networks (same tasks, same initial $W$ and $B$: a paired comparison)
# online on new tasks and measure the angles after training. `labkit.analysis.fresh_tasks`
# draws them, the same way `labkit evaluate` (`labkit.evaluation.evaluate_rule`) draws new tasks.
#
# **Note: fixed $\theta$.** The paper meta-learns $\theta$ for every configuration. Here, to keep
# the table cheap, all eight configurations use **one fixed** $\theta$: $\theta_0$ = the
# meta-learned learning rate of the committed `fa_lr` run and $\theta_2$ = the mean $\theta_2$ of
# the committed `bio` run (both learned on the 5-layer network). Without committed results
# (smoke mode) we use the documented values $\theta_0 = 0.005$, $\theta_2 = -0.02$, chosen by a
# small scan on digits with this network ($\theta_2 \in \{-0.02, -0.005, 0, 0.005, 0.02\}$ gave
# 65%, 37%, 29%, 26%, 27% query accuracy with 16 tasks, eHebb in all layers).

# %%
THETA_0 = fa.mean_theta(0) if fa.source == "results" else 0.005
THETA_2 = bio.mean_theta(2) if bio.source == "results" else -0.02
print(f"fixed theta for sections 3-4: theta_0 = {THETA_0:.4g} ({'fa_lr run' if fa.source == 'results' else 'documented'}),"
      f" theta_2 = {THETA_2:.4g} ({'bio run' if bio.source == 'results' else 'documented'})")

t0 = time.perf_counter()
net3 = fresh_tasks((130, 70), N_TASKS, K_LIVE, dataset=DATASET)  # N_TASKS tasks, each with its own W and B
ep3 = net3.episodes
theta3 = task_theta(theta_vector({0: THETA_0, 2: THETA_2}), N_TASKS)  # (N_TASKS, 10), the same rule for all
rows = []
for choice in itertools.product([False, True], repeat=3):
    spec = [[0, 2] if has else [0] for has in choice]
    W_after = online_train(net3.Ws, net3.Bs, "fa", make_rule(spec, 3), theta3, ep3.x_train, ep3.y_train)
    _, acc = query_loss_and_accuracy(W_after, ep3.x_query, ep3.y_query)
    alpha = alignment_angles(W_after, net3.Bs, "fa", ep3.x_query, ep3.y_query)
    wang = weight_angles(W_after, net3.Bs, "fa")
    name = ",".join(str(l + 1) for l, has in enumerate(choice) if has) or "none"
    rows.append({"eHebb in layers": name, "query accuracy": acc.mean().item(),
                 **{f"alpha_{l}": alpha[:, l - 1].nanmean().item() for l in (1, 2)},
                 **{f"angle(W_{l}, B_{l}^T)": wang[:, l - 1].mean().item() for l in (1, 2, 3)},
                 **{f"_has_{l}": has for l, has in zip((1, 2, 3), choice)}})
table1 = pd.DataFrame(rows).set_index("eHebb in layers")
print(f"network {'-'.join(map(str, net3.sizes))}, {N_TASKS} new tasks, K = {K_LIVE}, "
      f"one online pass; {time.perf_counter() - t0:.1f} s")
table1.drop(columns=[c for c in table1 if c.startswith("_")])

# %% [markdown]
# Read the table with the indexing in mind. Layer $l$'s feedback matrix $B_l$ carries the
# teaching signal *down* from layer $l$ to layer $l-1$, so eHebb in layer $l$ (which pulls $W_l$
# towards $B_l^\top$) should improve $\alpha_{l-1}$, the angle of the signal it sends, and the
# angle between $W_l$ and $B_l^\top$. (Layer 1 sends its signal to the input pixels, which
# have no weights to teach, so it has no $\alpha$ of its own.) The effect of giving layer $l$
# the eHebb term, averaged over the choices for the other layers:

# %%
effects = []
for l in (1, 2, 3):
    has = table1[f"_has_{l}"]
    for column in ([f"alpha_{l - 1}"] if l > 1 else []) + [f"angle(W_{l}, B_{l}^T)"]:
        effects.append((f"layer {l}", column, table1.loc[~has, column].mean(), table1.loc[has, column].mean()))
effect_table = pd.DataFrame(effects, columns=["eHebb given to", "angle (deg)", "without", "with"])
effect_table["change"] = effect_table["with"] - effect_table["without"]
effect_table.set_index(["eHebb given to", "angle (deg)"])

# %%
shown = table1.drop(columns=[c for c in table1 if c.startswith("_") or c == "query accuracy"])
fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
im = ax.imshow(shown.to_numpy(), cmap="viridis_r", aspect="auto")
ax.set_xticks(range(shown.shape[1]), shown.columns, rotation=20, fontsize="small")
ax.set_yticks(range(shown.shape[0]), shown.index)
ax.set_ylabel("eHebb in layers")
for (i, j), v in np.ndenumerate(shown.to_numpy()):
    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="small", color="k" if v < np.nanmean(shown.to_numpy()) else "w")
fig.colorbar(im, ax=ax, label="angle (deg)")
ax.set_title(f"Table 1: angles after one online pass, {'-'.join(map(str, net3.sizes))}, {N_TASKS} tasks, K = {K_LIVE}\n"
             rf"fixed $\theta_0$ = {THETA_0:.3g}, $\theta_2$ = {THETA_2:.3g} (not meta-learned per configuration)",
             fontsize="small")
save_figure(fig, FIG_DIR, "03_table1_angles.png")

# %% [markdown]
# **Think!**
#
# 1. eHebb in layer 1 barely moves anything measurable. Yet the paper's rule uses eHebb in every
#    layer. Does it cost anything to have it in layer 1?
# 2. The weight angles stay close to $90^\circ$ even where $\alpha$ drops a lot. How can $W_l$
#    be almost orthogonal to $B_l^\top$ as a matrix, yet $W_l^\top e_l$ be well aligned with
#    $B_l e_l$? (Hint: section 2, the errors live in a small subspace.)
#
# **Summary.** Giving a layer the eHebb term lowers the angle of the teaching signal that
# passes through that layer's feedback, and the angle between its weights and its feedback
# matrix; accuracy rises most when the top layers get it.
#
# **Exercises.** 1. Meta-learn $\theta$ for one configuration instead of fixing it: per-layer
# rules go through the Python API, e.g.
# `MetaTrainer(MetaConfig(rule=[[0, 2], [0], [0]], hidden=(130, 70), episodes=100), out="runs/t1_100").run()`.
# Does the table change? 2. Scan
# $\theta_2$ (including positive values) for the configuration "1,2,3".

# %% [markdown]
# ### Table 1 as the paper made it: $\theta$ meta-learned for each configuration
#
# The paper-scale set (`scripts/paper_scale.py`) meta-learns $\theta_0$ and $\theta_2$ for each of
# the eight configurations on this 784-130-70-10 network, 20 trials x 600 episodes each, into
# `results/paper/table1_*` (e.g. `table1_2-3` has eHebb in layers 2 and 3). Reading committed
# results costs nothing, so this cell reads them in smoke mode too; a configuration that has not
# been computed yet is listed as missing. Accuracy and the angles $\alpha_1$, $\alpha_2$ are each
# trial's mean over its last 10 episodes, then the mean over the 20 trials with its 98% bootstrap
# CI (chance is 20%); the weight angles are means over trials.

# %%
TABLE1_RUNS = {"none": "table1_none", "1": "table1_1", "2": "table1_2", "1,2": "table1_1-2",
               "3": "table1_3", "1,3": "table1_1-3", "2,3": "table1_2-3", "1,2,3": "table1_1-2-3"}
finished = {k: PAPER / v for k, v in TABLE1_RUNS.items() if (PAPER / v / results.THETA_FILE).is_file()}
print(f"meta-learned Table 1: {len(finished)} of 8 configurations committed in {PAPER}; "
      f"missing: {', '.join(k for k in TABLE1_RUNS if k not in finished) or 'none'}")
meta_table1 = None
if finished:
    t1 = results.run_table(finished.values(), labels=finished.keys()).rename(columns={"run": "eHebb in layers"})
    t1["final meta-accuracy (98% CI)"] = [f"{100 * m:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"
                                          for m, lo, hi in zip(t1["accuracy"], t1["ci_low"], t1["ci_high"])]
    histories = [results.read_history(folder) for folder in finished.values()]  # read once, used for both angles
    for a in ("alpha_1", "alpha_2"):  # the per-trial final angles and their CI
        cis = [bootstrap_ci(results.final_values(h, a).dropna().to_numpy()) for h in histories]
        t1[f"{a} lo"], t1[f"{a} hi"] = [float(c[1]) for c in cis], [float(c[2]) for c in cis]
        t1[f"{a} (98% CI)"] = [f"{m:.1f} ({lo:.1f}-{hi:.1f})" for m, lo, hi in zip(t1[a], t1[f"{a} lo"], t1[f"{a} hi"])]
    meta_table1 = t1.set_index("eHebb in layers").reindex(columns=[
        "final meta-accuracy (98% CI)", "alpha_1 (98% CI)", "alpha_2 (98% CI)", "weight_angle_1", "weight_angle_2",
        "weight_angle_3", "theta_0", "theta_2", "diverged"])
meta_table1

# %%
if finished:
    x = np.arange(len(t1))
    fig, (ax_acc, ax_ang) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    ax_acc.bar(x, 100 * t1["accuracy"], color="C2",
               yerr=[100 * (t1["accuracy"] - t1["ci_low"]), 100 * (t1["ci_high"] - t1["accuracy"])], capsize=3)
    ax_acc.axhline(20, color="k", ls=":", lw=1, label="chance (5-way)")
    ax_acc.set(ylabel="final meta-accuracy (%)", ylim=(0, 100), title="accuracy, 98% CI")
    ax_acc.legend(loc="upper left", fontsize="small")
    for k, a in enumerate(("alpha_1", "alpha_2")):
        ax_ang.bar(x + (k - 0.5) * 0.4, t1[a], width=0.4, color=f"C{k}", label=rf"$\alpha_{k + 1}$",
                   yerr=[t1[a] - t1[f"{a} lo"], t1[f"{a} hi"] - t1[a]], capsize=2)
    ax_ang.set(ylabel="alignment angle (deg)", ylim=(0, 95), title="alignment angles, 98% CI")
    ax_ang.legend(loc="upper right", ncol=2, fontsize="small")
    for ax in (ax_acc, ax_ang):
        ax.set_xticks(x, t1["eHebb in layers"])
        ax.set_xlabel("eHebb in weight layers")
    fig.suptitle(f"Table 1 with theta meta-learned per configuration: 784-130-70-10, "
                 f"{int(t1['trials'].max())} trials x {int(t1['episodes'].max())} episodes", fontsize="medium")
    save_figure(fig, FIG_DIR, "03_table1_meta.png")

# %% [markdown]
# With $\theta$ meta-learned per configuration the picture of the fixed-$\theta$ table holds, and
# now with confidence intervals: eHebb in weight layer 3 brings $\alpha_2$ from about $80^\circ$ to
# about $30^\circ$, eHebb in weight layer 2 brings $\alpha_1$ from about $75^\circ$ to about
# $50^\circ$, and each lifts accuracy by more than ten points; both together give the best rule
# (about 87%, against 63% with no eHebb at all). eHebb in weight layer 1 changes nothing, and
# alone it is given a $\theta_2$ close to zero: meta-learning finds no use for it.
#
# **Think!** Meta-learning chose a *smaller* $|\theta_2|$ for configuration "3" than for "2".
# Which weight matrix does eHebb change in each case, and how large is it?

# %% [markdown]
# ## 4 · How much of the output error reaches each layer? (Fig. 6)
#
# A layer learns only what its teaching signal tells it. Two measures, on the query batch of
# the deep 5-layer network, for each layer $l$:
#
# * the per-sample cosine between $e_l$ (through $B$) and backprop's $e_l^{BP}$ (through $W^\top$),
#   both computed from the same output error $e_L$;
# * the cosine between the layer's pseudo-gradient $\sum_n e_l y_{l-1}^\top$ and the true gradient
#   $\sum_n e^{BP}_l y_{l-1}^\top$ of the loss: the fraction of the update that goes downhill.
#
# We compare networks before training, after one online pass with FA ($\theta_0$) and after one
# pass with eHebb ($\theta_0$ and $\theta_2$, same fixed values as in section 3).
# `labkit.analysis.information_flow` computes both measures for every layer of a batch of networks.

# %%
t0 = time.perf_counter()
hidden5 = tuple(ehebb.config["hidden"])
net5 = fresh_tasks(hidden5, N_TASKS, K_LIVE, seed=2000, dataset=DATASET)
ep5, L5 = net5.episodes, net5.n_layers
nets = {
    "untrained": net5.Ws,
    "FA": online_train(net5.Ws, net5.Bs, "fa", make_rule("fa", L5),
                       task_theta(theta_vector({0: THETA_0}), N_TASKS), ep5.x_train, ep5.y_train),
    "eHebb": online_train(net5.Ws, net5.Bs, "fa", make_rule("ehebb", L5),
                          task_theta(theta_vector({0: THETA_0, 2: THETA_2}), N_TASKS), ep5.x_train, ep5.y_train),
}
columns = {"signal_cosine": "cos(e_l, e_l^BP)", "gradient_cosine": "cos(pseudo-grad, grad)"}
flow = pd.concat(
    {name: information_flow(W, net5.Bs, ep5.x_query, ep5.y_query, feedback="fa").rename(columns=columns)
     for name, W in nets.items()},
    names=["network"],
).reset_index()
print(f"network {'-'.join(map(str, net5.sizes))}, {N_TASKS} tasks, K = {K_LIVE}; {time.perf_counter() - t0:.1f} s")
flow.pivot(index="layer", columns="network")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for ax, column in zip(axes, ["cos(e_l, e_l^BP)", "cos(pseudo-grad, grad)"]):
    for name, marker in zip(nets, "o^s"):
        part = flow[flow["network"] == name]
        ax.plot(part["layer"], part[column], marker=marker, label=name)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("layer l (L = output)")
    ax.set_ylabel(column)
    ax.set_xticks(range(1, L5 + 1))
    ax.legend(fontsize="small")
fig.suptitle(f"Information about the output error reaching each layer (Fig. 6): {'-'.join(map(str, net5.sizes))}, "
             f"{N_TASKS} tasks, K = {K_LIVE}, one online pass\n"
             rf"fixed $\theta_0$ = {THETA_0:.3g}, $\theta_2$ = {THETA_2:.3g}", fontsize="small")
save_figure(fig, FIG_DIR, "03_fig6_information_flow.png")

# %% [markdown]
# At the output layer both measures are 1 by construction. Going down, a random-feedback
# signal quickly becomes uninformative: after an FA pass the update of the lower layers is
# almost orthogonal to the gradient. eHebb keeps the top of the network aligned, so more of
# the output error's information survives the first steps down. This is the information-flow
# argument: every layer that eHebb aligns passes a more useful signal to the layer below, so
# the benefit compounds from the output downwards.
#
# **Think!** Backprop's signal degrades with depth too (vanishing gradients), but for a
# different reason. Which one?
#
# **Summary.** Random feedback loses the output error's information within one or two layers;
# eHebb slows this loss down, so deeper layers receive usable teaching signals.
#
# **Exercises.** 1. Repeat with a deeper network (`hidden5 = (170, 130, 100, 70, 50, 30)`).
# 2. Replace the FA pass by backprop (`"bp"` feedback): are both cosines 1 everywhere?

# %% [markdown]
# ## 5 · Oja: better forward features, not better alignment (Figs. 7-8)
#
# $F^{Oja} = \{\theta_0, \theta_9\}$. Oja's term $y_l y_{l-1}^\top - y_l y_l^\top W_l$ uses no
# error at all. For a linear unit it drives $W_l$ towards a fixed point with orthonormal rows,
# $W_l W_l^\top = I$: the layer keeps the principal subspace of its input and forwards it
# without distortion. The orthonormality error measures the distance from that fixed point on
# the query batch:
#
# $$E_l = \lVert z_l - W_l W_l^\top \sigma(z_l) \rVert^2 .$$

# %%
oja = load_or_run("oja", PAPER, SMOKE, rule="oja")
fig7 = {"F^Oja": oja, "FA": fa, "F^bio": bio}

fig, ax = plt.subplots(figsize=(6.4, 4.2))
plots.plot_meta_curves({k: r.history for k, r in fig7.items()}, "meta_accuracy", ax=ax, window=WINDOW)
ax.set_title("Meta-accuracy (Fig. 7)\n" + "; ".join(f"{k}: {r.size}" for k, r in fig7.items()), fontsize="small")
save_figure(fig, FIG_DIR, "03_fig7_meta_accuracy.png")

pair = {"F^Oja": oja.history, "FA": fa.history}
per_layer_figure(pair, plots.plot_alignment, range(1, L),
                 f"Alignment angle per layer (Fig. 7): F^Oja {oja.size}; FA {fa.size}", "03_fig7_alignment.png")
per_layer_figure(pair, plots.plot_orthonormality, range(1, L + 1),
                 f"Orthonormality error per layer (Fig. 8): F^Oja {oja.size}; FA {fa.size}",
                 "03_fig8_orthonormality.png")

# %%
rows = {"meta-accuracy": [final_mean(r, "meta_accuracy") for r in (oja, fa)]}
rows.update({f"alpha_{l} (deg)": [final_mean(r, f"alpha_{l}") for r in (oja, fa)] for l in range(1, L)})
rows.update({f"E_{l}": [final_mean(r, f"ortho_{l}") for r in (oja, fa)] for l in range(1, L + 1)})
oja_table = pd.DataFrame(rows, index=["F^Oja", "FA"]).T
oja_table["Oja / FA"] = oja_table["F^Oja"] / oja_table["FA"]
oja_table.rename_axis("mean of the last 10 episodes")

# %% [markdown]
# The paper's finding: $F^{Oja}$ clearly beats FA while its alignment angles stay about where
# FA's are; what changes is $E_l$, which falls well below FA's. Oja's term improves the
# *forward* pass (better-conditioned features that keep the information of the input), so the
# same poor teaching signals go further. eHebb and Oja help in complementary ways, which is
# why $F^{bio}$ keeps both.
#
# **Think!**
#
# 1. Oja's term is unsupervised. Would it help if the network were trained with backprop?
# 2. $E_l$ uses $\sigma(z_l)$ where Oja's linear analysis uses $z_l$. Why can $E_l$ not reach
#    zero for a softplus layer?
#
# **Summary.** Oja's term leaves alignment almost unchanged but pulls every layer towards
# orthonormal weights, improving the features that the random teaching signals act on.
#
# **Exercises.** 1. Compute $\lVert W_l W_l^\top - I \rVert_F$ for the adapted weights of a few
# tasks trained with FA and with $F^{Oja}$ (use `online_train` as in section 3 with
# `make_rule("oja", L)`). 2. Plot `ortho_l` of the `bio` run with `plots.plot_orthonormality`:
# does $F^{bio}$ inherit Oja's effect?

# %% [markdown]
# ## Summary
#
# * **eHebb** ($-e_l e_{l-1}^\top$) pulls each layer's forward weights towards the transpose of
#   its feedback matrix. In a linear network its average is $\propto B_l^\top$ exactly once the
#   rest of the network is averaged over. This aligns the random-feedback teaching signals with
#   backprop's (Fig. 5), layer by layer (Table 1), and lets more of the output error reach
#   deep layers (Fig. 6).
# * **Oja** ($y_l y_{l-1}^\top - y_l y_l^\top W_l$) does not improve alignment. It makes the weights
#   more orthonormal (Figs. 7-8) and so improves the forward features.
# * The discovered rule $F^{bio}$ combines both mechanisms, which is why it outperforms each
#   of them alone.
#
# *Reference:* N. Shervani-Tabar & R. Rosenbaum, Meta-learning biologically plausible
# plasticity rules with random feedback pathways, *Nat. Commun.* 14, 1805 (2023),
# doi:10.1038/s41467-023-37562-1.
