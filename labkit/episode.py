"""What one meta-training episode is made of, and what its meta-gradient returns.

Shared by the two engines that differentiate the inner loop (:mod:`labkit.learner`'s autograd
modes and :mod:`labkit.adjoint`'s hand-derived reverse pass), so that neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .feedback import check_plastic_feedback
from .feedback_terms import N_FEEDBACK_TERMS
from .networks import BETA
from .rules import Rule


@dataclass
class Episodic:
    """What the inner loop needs besides theta, for T trials.

    Ws: initial forward weights, L tensors (T, n_l, n_{l-1}); Bs: the feedback pathway's
    matrices (:func:`labkit.feedback.init_feedback`); feedback: the pathway's registry name;
    x_train: (T, N, n_0) in presentation order; y_train: (T, N) labels; x_query: (T, Q, n_0);
    y_query: (T, Q).

    feedback_terms: the plastic feedback terms (:mod:`labkit.feedback_terms`; a name such as
    ``"kp"``, indices or ``()``), normalised to a sorted tuple; ``()`` (the default) keeps the
    pathway's matrices fixed. Non-empty only for a pathway whose matrices may be plastic
    (``"fa"``): a ValueError says so at construction. Their coefficients phi (T, 4) are passed
    to the engines beside theta (:func:`labkit.learner.meta_gradient`).
    """

    Ws: list[torch.Tensor]
    Bs: list[torch.Tensor]
    feedback: str
    rule: Rule
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    beta: float = BETA
    feedback_terms: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.feedback_terms:
            self.feedback_terms = check_plastic_feedback(self.feedback, self.feedback_terms)
        elif not isinstance(self.feedback_terms, tuple):
            self.feedback_terms = ()


def resolve_phi(phi: torch.Tensor | None, ep: Episodic, theta: torch.Tensor) -> torch.Tensor | None:
    """phi checked against the episode: None when the feedback is fixed, else phi detached,
    (T, N_FEEDBACK_TERMS) with theta's dtype and device. A clear ValueError, before any work,
    for phi without plastic feedback terms, plastic feedback terms without phi, or a bad shape."""
    if phi is None:
        if ep.feedback_terms:
            raise ValueError(
                f"the episode has plastic feedback terms {list(ep.feedback_terms)} but no phi was given: "
                f"pass phi, a (T, {N_FEEDBACK_TERMS}) tensor of feedback-term coefficients")
        return None
    if not ep.feedback_terms:
        check_plastic_feedback(ep.feedback, range(N_FEEDBACK_TERMS))  # names why for a fixed pathway
        raise ValueError(
            "phi was given but the episode's feedback is fixed (Episodic.feedback_terms is empty): "
            "set feedback_terms (e.g. 'kp') to make the feedback matrices plastic, or pass phi=None")
    if not isinstance(phi, torch.Tensor) or tuple(phi.shape) != (theta.shape[0], N_FEEDBACK_TERMS):
        shape = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise ValueError(f"phi must be a ({theta.shape[0]}, {N_FEEDBACK_TERMS}) tensor (trials x feedback "
                         f"terms), got {shape}")
    return phi.detach().to(dtype=theta.dtype, device=theta.device)


class MetaGradient(NamedTuple):
    """The meta-gradient of T trials and what came with it."""

    loss: torch.Tensor  # (T,) query cross-entropy after adaptation
    accuracy: torch.Tensor  # (T,) query accuracy after adaptation
    grad: torch.Tensor  # (T, N_TERMS) d loss_i / d theta_i (zero for inactive terms)
    Ws: list[torch.Tensor]  # adapted weights, detached
    # with plastic feedback only (else None):
    phi_grad: torch.Tensor | None = None  # (T, N_FEEDBACK_TERMS) d loss_i / d phi_i (zero for inactive terms)
    Bs: list[torch.Tensor] | None = None  # adapted feedback matrices, detached
