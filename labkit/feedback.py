"""How errors travel back: backprop, feedback alignment and direct feedback alignment.

Errors use the row convention of :mod:`labkit.networks`: ``e_l`` is ``(T, n_l)`` for one
sample per trial or ``(T, N, n_l)`` for a batch.

* ``"bp"``  (backprop):  e_l = (W_{l+1}^T e_{l+1}) * sigma'(z_l), current forward weights.
* ``"fa"``  (feedback alignment): e_l = (B_{l+1} e_{l+1}) * sigma'(z_l), B_{l+1} fixed
  random ``(T, n_l, n_{l+1})``, the shape of W_{l+1}^T.
* ``"dfa"`` (direct feedback alignment): e_l = (D_l e_L) * sigma'(z_l), D_l fixed random
  ``(T, n_l, n_L)``: the output error goes straight to every layer.

The synthetic input-layer error (PAPER.md) is e_0 = (B_1 e_1) * (1 - exp(-beta y_0)), with
B_1 = W_1^T under backprop and D_0 e_L in place of B_1 e_1 under DFA.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import ops
from .networks import BETA, softplus_deriv_from_output, xavier_uniform

FEEDBACK_KINDS: tuple[str, ...] = ("bp", "fa", "dfa")


def check_kind(kind: str) -> str:
    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"unknown feedback {kind!r}; choose one of {', '.join(FEEDBACK_KINDS)}")
    return kind


def init_feedback(
    kind: str,
    sizes: Sequence[int],
    generators: Sequence[torch.Generator],
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Fixed random feedback matrices for every trial, drawn Xavier-uniform.

    ``"bp"``: ``[]`` (backprop reads the current W). ``"fa"``: ``[B_1, ..., B_L]`` with
    ``B_l: (T, n_{l-1}, n_l)``. ``"dfa"``: ``[D_0, ..., D_{L-1}]`` with ``D_l: (T, n_l, n_L)``.
    """
    check_kind(kind)
    L = len(sizes) - 1
    if kind == "bp":
        return []
    if kind == "fa":
        shapes = [(sizes[l - 1], sizes[l]) for l in range(1, L + 1)]
    else:
        shapes = [(sizes[l], sizes[L]) for l in range(0, L)]
    return [torch.stack([xavier_uniform(s, g, dtype) for g in generators]) for s in shapes]


def _apply(M: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """M e for M: (T, a, b) and e: (T, b) or (T, N, b) -> (T, a) or (T, N, a)."""
    if e.dim() == 2:
        return ops.matvec(M, e)
    return torch.bmm(e, M.transpose(1, 2))


def backward(
    kind: str,
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    e_L: torch.Tensor,
    beta: float = BETA,
    need_e0: bool = True,
) -> list[torch.Tensor | None]:
    """Teaching signals ``[e_0, e_1, ..., e_L]`` from the output error ``e_L``.

    ``ys`` are the activities of :func:`labkit.networks.forward` (``ys[0]`` is the input).
    ``e_0`` is the synthetic input-layer error, or ``None`` when ``need_e0`` is False
    (it costs the largest mat-vec of the pass and only some plasticity terms use it).
    """
    L = len(Ws)
    es: list[torch.Tensor | None] = [None] * (L + 1)
    es[L] = e_L
    lowest = 0 if need_e0 else 1
    for l in range(L - 1, lowest - 1, -1):
        if kind == "bp":
            e = es[l + 1]
            back = ops.vecmat(e, Ws[l]) if e.dim() == 2 else _apply(Ws[l].transpose(1, 2), e)
        elif kind == "fa":
            back = _apply(Bs[l], es[l + 1])
        elif kind == "dfa":
            back = _apply(Bs[l], e_L)
        else:
            check_kind(kind)
        es[l] = back * softplus_deriv_from_output(ys[l], beta)
    return es
