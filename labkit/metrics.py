"""Accuracy, loss, alignment angles, weight angles, orthonormality, weight norms and the
effective rank of hidden activations (docs/architecture.md, "Measurements").

All functions take batched trials: ``Ws[l-1]: (T, n_l, n_{l-1})``, a query batch
``x: (T, N, n_0)`` and integer labels ``y: (T, N)``; they return per-trial tensors.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .feedback import backward, get_pathway
from .networks import BETA, forward, logits


def query_loss(Ws: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Mean cross-entropy of the softmax output on the batch, per trial: (T,)."""
    z = logits(Ws, x, beta)
    logp = torch.log_softmax(z, dim=-1)
    return -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(-1)


def query_loss_and_accuracy(
    Ws: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, beta: float = BETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy), each (T,): the meta-loss (without L1) and the meta-accuracy."""
    z = logits(Ws, x, beta)
    logp = torch.log_softmax(z, dim=-1)
    loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(-1)
    acc = (z.argmax(-1) == y).to(z.dtype).mean(-1)
    return loss, acc


def vector_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between vectors along the last axis (NaN if either is zero)."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


@torch.no_grad()
def alignment_angles(
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    feedback: str,
    x: torch.Tensor,
    y: torch.Tensor,
    beta: float = BETA,
) -> torch.Tensor:
    """alpha_l for l = 1..L-1, (T, L-1) degrees.

    The teaching signal e_l through the feedback pathway and the one through the current
    W^T (backprop) are computed from the same output error e_L on the batch, each averaged
    over the batch, and the angle between the two averages is taken (as the paper does).
    alpha_L = 0 by construction and is not returned.
    """
    _, ys = forward(Ws, x, beta)
    target = torch.nn.functional.one_hot(y, ys[-1].shape[-1]).to(ys[-1].dtype)
    e_L = ys[-1] - target
    es_fb = backward(feedback, Ws, Bs, ys, e_L, beta, need_e0=False, target=target)
    es_bp = backward("bp", Ws, [], ys, e_L, beta, need_e0=False, target=target)
    L = len(Ws)
    return torch.stack(
        [vector_angle(es_fb[l].mean(1), es_bp[l].mean(1)) for l in range(1, L)], dim=-1
    ) if L > 1 else torch.zeros(x.shape[0], 0, dtype=x.dtype)


@torch.no_grad()
def weight_angles(Ws: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], feedback: str) -> torch.Tensor:
    """Angle in degrees between W_l and B_l^T (flattened), l = 1..L: (T, L).

    B_l is the matrix the pathway sends layer l's error back through
    (:meth:`labkit.pathways.Pathway.feedback_matrices`): 0 under backprop (B = W^T by
    definition); NaN where the pathway has no such matrix (direct feedback alignment, DRTP).
    """
    T = Ws[0].shape[0]
    pathway = get_pathway(feedback)
    if pathway.transports_weights:
        return torch.zeros(T, len(Ws), dtype=Ws[0].dtype)
    Bt = pathway.feedback_matrices(Ws, Bs)
    if Bt is None:
        return torch.full((T, len(Ws)), math.nan, dtype=Ws[0].dtype)
    return torch.stack(
        [vector_angle(W.reshape(T, -1), B.transpose(1, 2).reshape(T, -1)) for W, B in zip(Ws, Bt)], dim=-1
    )


@torch.no_grad()
def orthonormality(Ws: Sequence[torch.Tensor], x: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """E_l = || z_l - W_l W_l^T y_l ||^2 averaged over the batch, l = 1..L: (T, L).

    y_l = sigma(z_l) for hidden layers and softmax(z_L) for the output, the activities
    Oja's term uses. Small when W_l W_l^T is near the identity (Oja's fixed point).
    """
    zs, ys = forward(Ws, x, beta)
    out = []
    for l, W in enumerate(Ws, start=1):
        WWt = torch.bmm(W, W.transpose(1, 2))  # (T, n_l, n_l)
        resid = zs[l - 1] - torch.bmm(ys[l], WWt.transpose(1, 2))
        out.append(resid.pow(2).sum(-1).mean(-1))
    return torch.stack(out, dim=-1)


@torch.no_grad()
def weight_norms(Ws: Sequence[torch.Tensor]) -> torch.Tensor:
    """Frobenius norms ||W_l||_F = sqrt(sum_ij W_l[i, j]^2), l = 1..L: (T, L).

    The hidden layers' incoming weights are the first L-1 columns, the output layer's the last.
    """
    return torch.stack([W.flatten(1).norm(dim=-1) for W in Ws], dim=-1)


@torch.no_grad()
def effective_rank(activations: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of a batch of activations.

    For a matrix A (N samples x n units) with singular values sigma_1..sigma_k,
    k = min(N, n), let p_i = sigma_i / sum_j sigma_j (the normalised singular values); then

        erank(A) = exp(H(p)),    H(p) = -sum_i p_i log p_i    (0 log 0 = 0).

    It lies in [1, k]: 1 for a rank-1 matrix, k for k orthogonal directions of equal norm,
    and it does not change when A is multiplied by a non-zero number. The activations are
    not centred (the matrix itself, as Roy & Vetterli define it).

    Args:
        activations: ``(N, n)`` one batch, or ``(T, N, n)`` a batch per trial.

    Returns:
        A 0-d tensor for ``(N, n)``, ``(T,)`` for ``(T, N, n)``; NaN for an all-zero matrix
        (whose effective rank is not defined) and for a matrix with a non-finite entry (a
        diverged network's). Computed in float64 (returned in the input's floating dtype).
    """
    if activations.dim() not in (2, 3):
        raise ValueError(f"effective_rank takes (N, n) or (T, N, n) activations, got shape {tuple(activations.shape)}")
    dtype = activations.dtype if activations.is_floating_point() else torch.float64
    a = activations.to(torch.float64)
    finite = torch.isfinite(a).flatten(-2).all(-1)  # () or (T,)
    sv = torch.linalg.svdvals(torch.where(finite[..., None, None], a, torch.zeros_like(a)))  # (..., k), >= 0
    p = sv / sv.sum(-1, keepdim=True)  # NaN where the matrix is all zeros
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)
    h = torch.where(torch.isnan(p).any(-1) | ~finite, torch.full_like(h, math.nan), h)
    return torch.exp(h).to(dtype)


@torch.no_grad()
def hidden_effective_ranks(Ws: Sequence[torch.Tensor], x: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Effective rank of each hidden layer's activations y_l = sigma(z_l) on the batch
    ``x: (T, N, n_0)``, l = 1..L-1 (:func:`effective_rank` over the N samples): (T, L-1)."""
    _, ys = forward(Ws, x, beta)
    L = len(Ws)
    if L < 2:
        return torch.zeros(x.shape[0], 0, dtype=x.dtype)
    return torch.stack([effective_rank(ys[l]) for l in range(1, L)], dim=-1)
