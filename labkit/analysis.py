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
  between the layer's pseudo-gradient and the true gradient.

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

from .data import Episode, EpisodeSampler, load_dataset, stack_episodes
from .feedback import backward, init_feedback
from .meta import trial_generators
from .networks import BETA, forward, init_weights
from .terms import N_TERMS

__all__ = ["FreshTasks", "fresh_tasks", "task_theta", "information_flow"]


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
