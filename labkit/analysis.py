"""Experiments that take a rule apart: fresh networks on new tasks, information flow.

Notebook 03 (interpreting the discovered rule) and anyone probing a rule outside
meta-training use these:

* :func:`fresh_tasks` -> new few-shot tasks, each with its own freshly drawn W and B, drawn
  exactly as :func:`labkit.evaluation.evaluate_rule` draws them, so that several rules (or
  per-layer variants of one) can be compared on the same networks and data (a paired
  comparison);
* :func:`task_theta` -> one coefficient row per task, for :func:`labkit.learner.online_train`;
* :func:`information_flow` -> per layer, how much of the output error's information the
  feedback pathway delivers: the cosine between its teaching signal and backprop's, and
  between the layer's pseudo-gradient and the true gradient;
* :func:`paired_comparison` -> accuracies of several rules on the same tasks against a
  baseline rule: each mean with its CI and the paired difference with its CI;
* :func:`online_study` / :func:`online_study_table` -> one online pass over a data stream
  for several rules, depths and initialisation scales, with accuracy, weight norms and the
  effective rank of hidden activations (notebook 06 and ``scripts/beyond_paper.py``).

Shapes follow the library: T tasks (the batch axis), ``Ws[l-1]: (T, n_l, n_{l-1})``,
``x: (T, N, n_0)``, ``y: (T, N)``. Run-level numbers (final accuracy, theta per trial) are in
:mod:`labkit.results`.

Layering: imports only lower layers (data, networks, feedback, learner, meta); nothing in
:mod:`labkit.tutorial`, :mod:`labkit.plots`, :mod:`labkit.widgets` or :mod:`labkit.cli`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .data import Episode, EpisodeSampler, load_dataset, online_stream, stack_episodes
from .feedback import backward, init_feedback
from .learner import learning_curve
from .meta import trial_generators
from .networks import BETA, forward, init_weights
from .rules import make_rule
from .stats import bootstrap_ci
from .terms import N_TERMS

__all__ = ["FreshTasks", "fresh_tasks", "task_theta", "information_flow", "paired_comparison", "online_study",
           "online_study_table"]


@dataclass(frozen=True)
class FreshTasks:
    """T new tasks, each with its own fresh network and feedback (see :func:`fresh_tasks`).

    Attributes:
        sizes: layer widths ``(n_0, ..., n_L)``.
        feedback: the feedback pathway ``Bs`` was drawn for (e.g. ``"fa"``).
        Ws: L tensors ``(T, n_l, n_{l-1})``, the initial forward weights.
        Bs: the feedback matrices of ``feedback`` (:func:`labkit.feedback.init_feedback`).
        episodes: the T tasks stacked (:class:`labkit.data.Episode`): ``x_train (T, M*K, n_0)``,
            ``y_train (T, M*K)``, ``x_query (T, M*Q, n_0)``, ``y_query (T, M*Q)``.
    """

    sizes: tuple[int, ...]
    feedback: str
    Ws: list[torch.Tensor]
    Bs: list[torch.Tensor]
    episodes: Episode

    @property
    def tasks(self) -> int:
        """Number of tasks T."""
        return int(self.Ws[0].shape[0])

    @property
    def n_layers(self) -> int:
        """Number of weight layers L."""
        return len(self.sizes) - 1


def fresh_tasks(
    hidden: Sequence[int],
    tasks: int,
    K: int,
    *,
    M: int = 5,
    Q: int = 10,
    seed: int = 1000,
    dataset: str = "digits",
    data_root: str | None = None,
    feedback: str = "fa",
    input_scale: float | str = "auto",
    init_scale: float = 1.0,
) -> FreshTasks:
    """Draw ``tasks`` new M-way tasks, each with a fresh network ``n_0-hidden-n_L`` and feedback.

    Task k draws its images from ``trial_generators(seed, k)[0]`` and its W (then B) from
    ``trial_generators(seed, k)[1]``: the same tasks and initial weights as
    :func:`labkit.evaluation.evaluate_rule` with the same ``seed``, ``dataset``, ``hidden``,
    ``M``, ``K``, ``Q`` (its default ``seed=1000`` keeps them apart from the meta-training
    trials, which use seeds 0, 1, ...). Nothing is trained.

    Args:
        hidden: hidden layer widths, e.g. ``(130, 70)``.
        tasks: number of tasks T (the batch axis of everything returned).
        K, Q, M: training and query images per class, classes per task.
        seed: of the tasks' generators.
        dataset, data_root, input_scale: passed to :func:`labkit.data.load_dataset`.
        feedback: the pathway to draw feedback matrices for (:data:`labkit.feedback.FEEDBACK_KINDS`).
        init_scale: W drawn at this multiple of the Xavier scale, as by ``evaluate_rule``.

    Returns:
        :class:`FreshTasks` with ``sizes = (n_0, *hidden, n_L)``, n_L the dataset's number
        of classes (labels keep their dataset ids, as in meta-training).
    """
    if tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {tasks}")
    ds = load_dataset(dataset, data_root, False, "train", input_scale)
    sampler = EpisodeSampler(ds, M, K, Q)
    sizes = (int(ds.images.shape[1]), *(int(h) for h in hidden), int(sampler.n_outputs))
    gens = [trial_generators(seed, k) for k in range(tasks)]
    episodes = stack_episodes([sampler.sample(g[0]) for g in gens])
    weight_gens = [g[1] for g in gens]
    Ws = init_weights(sizes, weight_gens, scale=init_scale)
    Bs = init_feedback(feedback, sizes, weight_gens)
    return FreshTasks(sizes, feedback, list(Ws), list(Bs), episodes)


def task_theta(theta: np.ndarray | Sequence[float] | torch.Tensor, tasks: int) -> torch.Tensor:
    """Coefficients for T tasks, ``(tasks, N_TERMS)`` float32, as :func:`labkit.learner.online_train` takes them.

    ``theta`` is one ``(N_TERMS,)`` vector (every task uses it; e.g.
    :func:`labkit.tutorial.theta_vector` of ``{0: 0.005, 2: -0.02}``) or ``(n, N_TERMS)``
    rows, task k using row k mod n (e.g. :func:`labkit.results.theta_matrix` of a run: one
    row per meta-trained trial), as :func:`labkit.evaluation.evaluate_rule` does.
    """
    th = torch.as_tensor(np.atleast_2d(np.asarray(theta, dtype=np.float64)), dtype=torch.float32)
    if th.ndim != 2 or th.shape[1] != N_TERMS or th.shape[0] < 1:
        raise ValueError(f"theta needs shape ({N_TERMS},) or (n, {N_TERMS}), got {tuple(th.shape)}")
    return th[torch.arange(tasks) % th.shape[0]].contiguous()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis (NaN where either vector is zero)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@torch.no_grad()
def information_flow(
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    feedback: str = "fa",
    beta: float = BETA,
) -> pd.DataFrame:
    """How much of the output error's information reaches each layer, on one batch.

    From the output error ``e_L = softmax(z_L) - onehot(y)`` of the network ``Ws`` on the
    batch, the teaching signals ``e_l`` are sent down through the ``feedback`` pathway (with
    ``Bs``) and through the current ``W^T`` (backprop, ``e_l^BP``). Per layer l = 1..L:

    * ``signal_cosine``: the cosine between ``e_l`` and ``e_l^BP`` per sample, averaged over
      all samples of all tasks (NaN cosines, of zero signals, skipped);
    * ``gradient_cosine``: per task, the cosine between the layer's pseudo-gradient
      ``sum_n e_l y_{l-1}^T`` and the true gradient ``sum_n e_l^BP y_{l-1}^T`` (flattened to
      vectors), averaged over the tasks: the fraction of the update that goes downhill.

    Both are 1 at the output layer (l = L) by construction, and everywhere for backprop.

    Args:
        Ws: L tensors ``(T, n_l, n_{l-1})``.
        Bs: the feedback matrices of ``feedback``.
        x: ``(T, N, n_0)`` inputs; y: ``(T, N)`` integer labels.

    Returns:
        A DataFrame indexed by ``layer`` (1..L) with float columns ``signal_cosine`` and
        ``gradient_cosine``.
    """
    _, ys = forward(Ws, x, beta)
    target = torch.nn.functional.one_hot(y, ys[-1].shape[-1]).to(ys[-1].dtype)
    e_L = ys[-1] - target
    e_fb = backward(feedback, Ws, Bs, ys, e_L, beta, need_e0=False, target=target)
    e_bp = backward("bp", Ws, [], ys, e_L, beta, need_e0=False, target=target)
    rows = []
    for l in range(1, len(Ws) + 1):
        a, b = e_fb[l], e_bp[l]  # (T, N, n_l)
        signal = _cosine(a, b).nanmean()
        g_fb = torch.bmm(a.transpose(1, 2), ys[l - 1]).flatten(1)  # (T, n_l * n_{l-1})
        g_bp = torch.bmm(b.transpose(1, 2), ys[l - 1]).flatten(1)
        grad = _cosine(g_fb, g_bp).mean()
        rows.append((l, float(signal), float(grad)))
    return pd.DataFrame(rows, columns=["layer", "signal_cosine", "gradient_cosine"]).set_index("layer")


def paired_comparison(
    accuracies: pd.DataFrame, baseline: str, by: Sequence[str] = ("protocol", "K"), level: float = 0.98
) -> pd.DataFrame:
    """Each rule against ``baseline`` on the same tasks.

    ``accuracies`` has one row per (``by`` values, ``rule``) with ``accuracy`` a sequence of
    per-task accuracies; within one group of ``by`` values, task k must be the same task for
    every rule (as :func:`labkit.evaluation.evaluate_rule` draws them for one seed and K).
    Returns one row per input row: ``accuracy`` (mean over tasks) with its percentile-bootstrap
    ``ci_low``/``ci_high`` (``level``, 500 resamples), and for every rule but the baseline
    ``diff`` = mean of (rule - baseline) per task with its bootstrap CI ``diff_low``/``diff_high``
    (resampling tasks, so the pairing is kept) and ``above`` = the whole CI is above 0,
    ``below`` = the whole CI is below 0.
    """
    by = list(by)
    out = []
    for key, group in accuracies.groupby(by, sort=True):
        base = group[group["rule"] == baseline]
        if len(base) != 1:
            raise ValueError(f"group {dict(zip(by, key if isinstance(key, tuple) else (key,)))} needs exactly one "
                             f"row of the baseline {baseline!r}, found {len(base)}")
        b = np.asarray(base["accuracy"].iloc[0], dtype=float)
        for _, row in group.iterrows():
            a = np.asarray(row["accuracy"], dtype=float)
            if a.shape != b.shape:
                raise ValueError(f"rule {row['rule']!r} has {a.size} tasks, the baseline {b.size}: a paired "
                                 "comparison needs the same tasks")
            m, lo, hi = (float(v) for v in bootstrap_ci(a, level=level))
            rec = {**{k: row[k] for k in by}, "rule": row["rule"], "tasks": a.size, "accuracy": m, "ci_low": lo,
                   "ci_high": hi, "diff": np.nan, "diff_low": np.nan, "diff_high": np.nan, "above": False,
                   "below": False}
            if row["rule"] != baseline:
                dm, dlo, dhi = (float(v) for v in bootstrap_ci(a - b, level=level))
                rec.update(diff=dm, diff_low=dlo, diff_high=dhi, above=dlo > 0, below=dhi < 0)
            out.append(rec)
    return pd.DataFrame(out)


def online_study(
    rules: dict[str, tuple[str, np.ndarray]],
    depths: Sequence[int] = (2, 4, 8, 12),
    init_scales: Sequence[float] = (1.0,),
    width: int = 100,
    trials: int = 10,
    seed: int = 0,
    steps: Sequence[int] = (0, 25, 50, 100, 200, 400, 800),
    n_samples: int | None = None,
    dataset: str = "digits",
    data_root: str | None = None,
    n_eval: int = 300,
    done: Sequence[dict] = (),
    on_result=None,
) -> list[dict]:
    """One online pass (batch 1) for every rule, depth and initialisation scale.

    ``rules``: label -> (feedback pathway, theta rows ``(n, N_TERMS)``); network i uses row
    i mod n. Each configuration trains ``trials`` networks ``(n_0, width x depth, n_classes)``
    whose forward weights are drawn at ``init_scale`` x the Xavier scale; network i draws
    its weights, feedback and order of the stream from ``trial_generators(seed, i)``, so every
    rule sees the same networks and images. The stream is :func:`labkit.data.online_stream`
    (``n_samples`` of it, default all); measured after each of ``steps`` samples and at the end:
    accuracy and loss on the ``n_eval`` held-out images, ``weight_norm (T, S, L)`` and the
    effective rank of each hidden layer's activations on the held-out images
    ``(T, S, depth)`` (:func:`labkit.learner.learning_curve`).

    Returns one dict per configuration (``init_scale``, ``depth``, ``rule``, ``feedback``,
    ``steps``, ``accuracy``, ``loss``, ``weight_norm``, ``effective_rank`` as nested lists,
    ``diverged`` per network). Configurations already in ``done`` (same init_scale, depth and
    rule) are kept, not rerun; ``on_result(results_so_far)`` is called after each new one
    (e.g. to save progress).
    """
    x, y, x_eval, y_eval, n_classes = online_stream(dataset, data_root, n_eval)
    N = len(x) if n_samples is None else min(int(n_samples), len(x))
    results = list(done)
    have = {(r["init_scale"], r["depth"], r["rule"]) for r in results}
    gens = [trial_generators(seed, i) for i in range(trials)]
    order = torch.stack([torch.randperm(len(x), generator=g[0])[:N] for g in gens])
    marks = sorted({int(s) for s in steps if 0 <= s < N} | {N})
    for scale in init_scales:
        for depth in depths:
            sizes = (x.shape[1], *(width,) * depth, n_classes)
            for label, (feedback, theta) in rules.items():
                if (float(scale), int(depth), label) in have:
                    continue
                theta = np.atleast_2d(np.asarray(theta, dtype=float))
                wg = [trial_generators(seed, i)[1] for i in range(trials)]
                Ws = init_weights(sizes, wg, scale=scale)
                Bs = init_feedback(feedback, sizes, wg)
                terms = sorted({r for r in range(N_TERMS) if np.any(theta[:, r] != 0)}) or [0]
                th = torch.tensor(theta[np.arange(trials) % theta.shape[0]], dtype=torch.float32)
                c = learning_curve(Ws, Bs, feedback, make_rule(terms, len(sizes) - 1), th, x[order], y[order],
                                   x_eval.expand(trials, -1, -1), y_eval.expand(trials, -1), steps=marks,
                                   probe=x_eval)
                loss = c["loss"].numpy()
                results.append(dict(
                    init_scale=float(scale), depth=int(depth), rule=label, feedback=feedback,
                    steps=c["steps"].tolist(), accuracy=c["accuracy"].numpy().tolist(), loss=loss.tolist(),
                    weight_norm=c["weight_norm"].numpy().tolist(),
                    effective_rank=c["effective_rank"].numpy().tolist(),
                    diverged=(~np.isfinite(loss[:, -1])).tolist()))
                if on_result is not None:
                    on_result(results)
    return results


def online_study_table(results: Sequence[dict], level: float = 0.98) -> pd.DataFrame:
    """One row per configuration of :func:`online_study`: final ``accuracy`` (mean over the
    networks that did not diverge) with its bootstrap CI, ``diverged`` networks, and at the end
    of the pass the mean hidden-layer ``hidden_weight_norm`` (||W_l||_F over l = 1..depth) and
    the effective rank of the first and last hidden layers (``first_hidden_rank``,
    ``last_hidden_rank``; over the networks where it is defined); NaN where every network
    diverged."""
    out = []
    for r in results:
        acc = np.asarray(r["accuracy"], dtype=float)[:, -1]
        ok = ~np.asarray(r["diverged"], dtype=bool)
        rec = dict(init_scale=r["init_scale"], depth=r["depth"], rule=r["rule"], accuracy=np.nan, ci_low=np.nan,
                   ci_high=np.nan, diverged=int((~ok).sum()), hidden_weight_norm=np.nan, first_hidden_rank=np.nan,
                   last_hidden_rank=np.nan)
        if ok.any():
            m, lo, hi = (float(v) for v in bootstrap_ci(acc[ok], level=level))
            ranks = np.asarray(r["effective_rank"], dtype=float)[ok, -1, :]
            rec.update(accuracy=m, ci_low=lo, ci_high=hi,
                       hidden_weight_norm=_nanmean(np.asarray(r["weight_norm"], dtype=float)[ok, -1, :-1]),
                       first_hidden_rank=_nanmean(ranks[:, 0]), last_hidden_rank=_nanmean(ranks[:, -1]))
        out.append(rec)
    return pd.DataFrame(out)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without numpy's warning) when there are none, e.g. the
    effective ranks of layers whose activations all vanished."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
