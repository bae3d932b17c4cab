"""What one meta-training episode is made of, and what its meta-gradient returns.

Shared by the two engines that differentiate the inner loop (:mod:`labkit.learner`'s autograd
modes and :mod:`labkit.adjoint`'s hand-derived reverse pass), so that neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .networks import BETA
from .rules import Rule


@dataclass
class Episodic:
    """What the inner loop needs besides theta, for T trials.

    Ws: initial forward weights, L tensors (T, n_l, n_{l-1}); Bs: the feedback pathway's
    matrices (:func:`labkit.feedback.init_feedback`); feedback: the pathway's registry name;
    x_train: (T, N, n_0) in presentation order; y_train: (T, N) labels; x_query: (T, Q, n_0);
    y_query: (T, Q).
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


class MetaGradient(NamedTuple):
    """The meta-gradient of T trials and what came with it."""

    loss: torch.Tensor  # (T,) query cross-entropy after adaptation
    accuracy: torch.Tensor  # (T,) query accuracy after adaptation
    grad: torch.Tensor  # (T, N_TERMS) d loss_i / d theta_i (zero for inactive terms)
    Ws: list[torch.Tensor]  # adapted weights, detached
