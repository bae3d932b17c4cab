"""Evaluating a plasticity rule: fresh networks trained online with fixed theta on new tasks.

:func:`evaluate_rule` is the meta-test of the paper's figures and of ``labkit evaluate``: a
rule with fixed coefficients (learned by :mod:`labkit.meta`, or chosen by hand) trains
networks from scratch, one sample at a time, on few-shot tasks that meta-training never saw,
and each network's query accuracy is reported. :func:`load_theta_from_results` reads the
learned coefficients of a run folder, :func:`load_phi_from_results` those of its plastic
feedback (docs/plastic-feedback.md).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .data import EpisodeSampler, load_dataset, split_classes, stack_episodes
from .feedback import check_plastic_feedback, init_feedback
from .feedback_terms import N_FEEDBACK_TERMS
from .learner import online_train, online_train_plastic
from .meta import HIDDEN_PAPER, trial_generators
from .metrics import query_loss_and_accuracy
from .networks import check_init_scale, init_weights
from .results import phi_matrix, read_config, theta_matrix
from .rules import make_rule
from .terms import DEFAULT_FEEDBACK, N_TERMS

__all__ = ["evaluate_rule", "load_theta_from_results", "load_phi_from_results"]


def load_theta_from_results(folder: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(final theta (T, N_TERMS), config) of a results folder; diverged trials dropped
    (:func:`labkit.results.theta_matrix` and :func:`labkit.results.read_config`)."""
    return theta_matrix(folder), read_config(folder)


def load_phi_from_results(folder: str | os.PathLike) -> tuple[np.ndarray | None, str | None]:
    """(final phi (T, N_FEEDBACK_TERMS), the feedback rule) of a results folder whose feedback
    was plastic, rows matching :func:`load_theta_from_results`'s (diverged trials dropped);
    ``(None, None)`` when its feedback was fixed."""
    phi = phi_matrix(folder)
    if phi is None:
        return None, None
    cfg = read_config(folder)
    rule = cfg.get("feedback_rule") or ",".join(str(s) for s in cfg.get("feedback_terms", []))
    if not rule:
        raise ValueError(f"{folder}: theta.json holds phi but config.json names no feedback_rule")
    return phi, rule


@torch.no_grad()
def evaluate_rule(
    rule: str | list,
    theta: np.ndarray | Sequence[float],
    feedback: str | None = None,
    dataset: str = "digits",
    data_root: str | None = None,
    hidden: Sequence[int] = HIDDEN_PAPER,
    M: int = 5,
    K: int | Sequence[int] = 50,
    Q: int = 10,
    tasks: int = 50,
    seed: int = 1000,
    test_classes: int = 0,
    input_scale: float | str = "auto",
    classes_seed: int = 0,
    init_scale: float = 1.0,
    phi: np.ndarray | Sequence[float] | None = None,
    feedback_rule: str | Sequence[int] | None = None,
) -> np.ndarray | dict[int, np.ndarray]:
    """Query accuracy of fresh networks trained online with a fixed rule on new tasks.

    ``theta`` is one (N_TERMS,) vector used for every task, or (n, N_TERMS): task k uses row
    k mod n (e.g. one row per meta-trained trial). ``feedback`` is a registered pathway
    (default: the rule's, else "fa"). Task k draws its task, weights and feedback matrices from
    ``trial_generators(seed, k)``. Returns (tasks,) accuracies. With ``test_classes`` > 0 the
    tasks use only the held-out meta-test classes of the same split as
    :class:`labkit.meta.MetaTrainer` with seed ``classes_seed``.

    The network is built for the evaluation dataset: ``(n_0, *hidden, n_L)`` with n_0 its
    image size and n_L its number of classes, fresh for every task; so a rule learned on one
    dataset (say digits, 10 outputs) can be evaluated on another (EMNIST, 47 outputs): the
    rule transfers, not the weights. ``hidden`` may have any depth (``(100,) * 12``).
    ``init_scale`` (> 0) draws the forward weights at that multiple of the Xavier scale
    (:func:`labkit.networks.init_weights`; the feedback matrices keep theirs).

    ``K`` may be a list of training-set sizes: the result is then ``{K: (tasks,) accuracies}``,
    each entry exactly what ``evaluate_rule(..., K=K)`` alone returns. For a given K, task k
    is the same whatever rule is evaluated with the same ``seed`` (paired comparisons);
    across the Ks, task k has the same classes and initial weights, with K (and so its
    images) differing.

    Plastic feedback (docs/plastic-feedback.md): ``feedback_rule`` (a name such as ``"kp"`` or
    a term list) makes the feedback matrices learn too, ``B_l <- B_l + sum_s phi_s G^s``, with
    ``phi`` one (N_FEEDBACK_TERMS,) vector or (n, N_FEEDBACK_TERMS) rows (task k uses row k mod
    n, as theta's). Both default to None: fixed feedback, the numbers as before.
    """
    th = torch.as_tensor(np.atleast_2d(np.asarray(theta, dtype=np.float64)), dtype=torch.float32)
    if th.shape[1] != N_TERMS:
        raise ValueError(f"theta needs {N_TERMS} entries (zeros for unused terms), got {th.shape[1]}")
    key = rule.strip().lower() if isinstance(rule, str) else None
    feedback = feedback or DEFAULT_FEEDBACK.get(key, "fa")
    fb = check_plastic_feedback(feedback, feedback_rule if feedback_rule is not None else ())
    ph = None
    if fb:
        if phi is None:
            raise ValueError(f"plastic feedback (terms {list(fb)}) needs phi, {N_FEEDBACK_TERMS} coefficients "
                             "(zeros for unused terms)")
        ph = torch.as_tensor(np.atleast_2d(np.asarray(phi, dtype=np.float64)), dtype=torch.float32)
        if ph.dim() != 2 or ph.shape[1] != N_FEEDBACK_TERMS:
            raise ValueError(f"phi needs {N_FEEDBACK_TERMS} entries (zeros for unused terms), got shape "
                             f"{tuple(ph.shape)}")
    elif phi is not None:
        raise ValueError("phi was given without a feedback rule: pass feedback_rule (e.g. 'kp') to make the "
                         "feedback plastic, or phi=None")
    Ks = [K] if isinstance(K, (int, np.integer)) else list(K)
    if not Ks or any(int(k) != k or k < 1 for k in Ks):
        raise ValueError(f"K must be a positive integer or a list of them, got {K!r}")
    scale = check_init_scale(init_scale)
    ds = load_dataset(dataset, data_root, False, "train", input_scale)
    classes = split_classes(ds.n_classes, test_classes, classes_seed)[1] if test_classes else None
    samplers = {int(k): EpisodeSampler(ds, M, int(k), Q, classes=classes) for k in Ks}  # validates every K first
    out = {k: _evaluate_tasks(sampler, rule, th, feedback, hidden, tasks, seed, scale, ph, fb)
           for k, sampler in samplers.items()}
    return out[int(K)] if isinstance(K, (int, np.integer)) else out


def _evaluate_tasks(sampler: EpisodeSampler, rule: str | list, th: torch.Tensor, feedback: str,
                    hidden: Sequence[int], tasks: int, seed: int, init_scale: float,
                    ph: torch.Tensor | None = None, fb: tuple[int, ...] = ()) -> np.ndarray:
    """:func:`evaluate_rule` for one sampler (one K): (tasks,) query accuracies."""
    sizes = (sampler.dataset.images.shape[1], *hidden, sampler.n_outputs)
    r = make_rule(rule, len(sizes) - 1)
    gens = [trial_generators(seed, k) for k in range(tasks)]
    accs = []
    batch = 16
    for start in range(0, tasks, batch):
        ks = list(range(start, min(tasks, start + batch)))
        ep = stack_episodes([sampler.sample(gens[k][0]) for k in ks])
        wg = [gens[k][1] for k in ks]
        Ws = init_weights(sizes, wg, scale=init_scale)
        Bs = init_feedback(feedback, sizes, wg)
        rows = torch.tensor(ks)
        if fb:
            Ws, _ = online_train_plastic(Ws, Bs, feedback, r, th[rows % th.shape[0]], ph[rows % ph.shape[0]], fb,
                                         ep.x_train, ep.y_train)
        else:
            Ws = online_train(Ws, Bs, feedback, r, th[torch.tensor(ks) % th.shape[0]], ep.x_train, ep.y_train)
        _, acc = query_loss_and_accuracy(Ws, ep.x_query, ep.y_query)
        accs.append(acc)
    return torch.cat(accs).numpy()
