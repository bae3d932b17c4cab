"""Batched mat-vec primitives of the inner loop, with hand-written backward passes.

Why this module exists: on CPU, PyTorch's ``bmm`` of a matrix batch by a column batch
(and the outer products autograd builds for its gradient) runs several times slower than the
mathematically identical row-vector forms, and autograd's transposed accumulations copy
whole matrices. Each function below computes the same value as the one-line reference in its
docstring; the backward passes use only the fast forms and write gradients in W's own
(contiguous) layout. ``tests/test_fast_paths.py`` checks values and gradients against the
reference ops.

Deferred weight gradients: a weight matrix W_{t+1} made by :func:`lowrank_update` is read
by mat-vecs in the next step (z = W y, u = W^T v). Their gradients with respect to W are
outer products; instead of materialising each one and letting autograd add them up (several
passes over a full matrix each), the mat-vecs leave their factors in a slot attached to
W_{t+1}, and the backward pass of the update that produced W_{t+1} (which autograd runs only
after every reader of W_{t+1}) adds them all with one in-place batched product.
This is only right when every backward pass runs through the update that made the weights
(as d loss / d theta through a whole unrolled episode does); a gradient with respect to such
weights themselves would miss the mat-vec terms. So it is off unless switched on with
:func:`deferred_weight_grads` (which :func:`labkit.learner.meta_gradient` does).

Shapes: W: (T, n, m); vectors carry the trial axis first.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_REFERENCE = False
_DEFER = False


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Use plain autograd ops instead (for forward-mode AD and for tests)."""
    global _REFERENCE
    old, _REFERENCE = _REFERENCE, True
    try:
        yield
    finally:
        _REFERENCE = old


@contextlib.contextmanager
def deferred_weight_grads() -> Iterator[None]:
    """Defer mat-vec weight gradients to the update that made the weights (module docstring).

    Use only around a computation whose backward passes reach every such update."""
    global _DEFER
    old, _DEFER = _DEFER, True
    try:
        yield
    finally:
        _DEFER = old


def rows_times_Wt(y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """W y for W (T, n, m), y (T, m) -> (T, n), as the row product y W^T (fast on CPU)."""
    return torch.bmm(y.unsqueeze(1), W.transpose(1, 2)).squeeze(1)


def rows_times_W(v: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """W^T v for W (T, n, m), v (T, n) -> (T, m), as the row product v W."""
    return torch.bmm(v.unsqueeze(1), W).squeeze(1)


class _Slot:
    """Outer-product factors (left (T, n), right (T, m)) owed to one weight tensor's gradient."""

    __slots__ = ("left", "right")

    def __init__(self) -> None:
        self.left: list[torch.Tensor] = []
        self.right: list[torch.Tensor] = []


def _slot(W: torch.Tensor) -> _Slot | None:
    return getattr(W, "_labkit_slot", None) if _DEFER else None


class _MatVec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(W, y)
        ctx.slot = _slot(W)
        return rows_times_Wt(y, W)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        W, y = ctx.saved_tensors
        gW = None
        if ctx.needs_input_grad[0]:
            if ctx.slot is not None:  # d/dW of W y is g y^T: owed to W's slot
                ctx.slot.left.append(g)
                ctx.slot.right.append(y)
            else:
                gW = g.unsqueeze(-1) * y.unsqueeze(1)
        gy = rows_times_W(g, W) if ctx.needs_input_grad[1] else None
        return gW, gy


class _VecMat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, W)
        ctx.slot = _slot(W)
        return rows_times_W(v, W)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        v, W = ctx.saved_tensors
        gv = rows_times_Wt(g, W) if ctx.needs_input_grad[0] else None
        gW = None
        if ctx.needs_input_grad[1]:
            if ctx.slot is not None:  # d/dW of W^T v is v g^T
                ctx.slot.left.append(v)
                ctx.slot.right.append(g)
            else:
                gW = v.unsqueeze(-1) * g.unsqueeze(1)
        return gv, gW


class _LowRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(U, V)
        out = torch.addcmul(base, U, V) if U.shape[-1] == 1 else torch.baddbmm(base, U, V)
        ctx.out_slot = out._labkit_slot = _Slot() if _DEFER else None
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        U, V = ctx.saved_tensors
        slot = ctx.out_slot
        if slot is not None and slot.left:
            # The full gradient of our output: what autograd delivered plus what the
            # output's mat-vec readers left in the slot. g is a buffer this chain owns
            # (made by the loss or by the next update), so it is completed in place.
            L = torch.stack(slot.left, dim=-1)
            R = torch.stack(slot.right, dim=1)
            if not g.is_contiguous():
                g = g.contiguous()
            g = g.baddbmm_(L, R) if L.shape[-1] > 1 else g.addcmul_(L, R)
            slot.left, slot.right = [], []
        # gU = g V^T computed as (V g^T)^T, gV = U^T g: both "rows times matrix" forms.
        gU = torch.bmm(V, g.transpose(1, 2)).transpose(1, 2) if ctx.needs_input_grad[1] else None
        gV = torch.bmm(U.transpose(1, 2), g) if ctx.needs_input_grad[2] else None
        return g, gU, gV


def matvec(W: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W y: (T, n, m), (T, m) -> (T, n). Reference: ``(W @ y[..., None])[..., 0]``."""
    if _REFERENCE:
        return (W @ y.unsqueeze(-1)).squeeze(-1)
    return _MatVec.apply(W, y)


def vecmat(v: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """W^T v: (T, n), (T, n, m) -> (T, m). Reference: ``(v[:, None, :] @ W)[:, 0]``."""
    if _REFERENCE:
        return (v.unsqueeze(1) @ W).squeeze(1)
    return _VecMat.apply(v, W)


def lowrank_update(base: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """base + U V: (T, n, m) + (T, n, k) (T, k, m). Reference: ``base + U @ V``."""
    if _REFERENCE:
        return base + U @ V
    return _LowRank.apply(base, U, V)
