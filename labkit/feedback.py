"""How errors travel back: the teaching signals e_0..e_L through a feedback pathway.

The pathways themselves (backprop, feedback alignment, direct feedback alignment,
sign-symmetry, direct random target projection, and any a user adds) live one per module in
:mod:`labkit.pathways`; this module runs them. Errors use the row convention of
:mod:`labkit.networks`: ``e_l`` is ``(T, n_l)`` for one sample per trial or ``(T, N, n_l)``
for a batch, and

    e_L = y_L - y*,    e_j = g_j * sigma'(z_j)  (j = L-1, ..., 0),

with g_j given by the pathway. e_0 is the synthetic input-layer error of the paper, with
sigma'(z_0) read as 1 - exp(-beta y_0) from the input itself; only plasticity terms that read
a pre-synaptic error need it.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import ops, pathways
from .feedback_terms import make_feedback_terms
from .networks import BETA, softplus_deriv_from_output
from .pathways import Pathway

#: Every registered pathway's name (bp, fa, dfa first).
FEEDBACK_KINDS: tuple[str, ...] = pathways.names()

# Whether the built-in pathways' matrices may be plastic (labkit.feedback_terms), and if not why
# and what to use instead. A pathway module may answer for itself instead, with the class
# attributes Pathway.plastic_matrices and Pathway.plastic_refusal, which take precedence.
_PLASTIC_BUILTIN = frozenset({"fa"})
_REFUSALS = {
    "bp": "backprop has no feedback matrices (it sends errors through the current W^T itself); "
          "use feedback='fa' with the Kolen-Pollack feedback rule 'kp' to learn B^T -> W",
    "usf": "uniform sign-symmetry derives its feedback from sign(W) at every step and has no free "
           "matrices; use feedback='fa'",
    "frsf": "frsf's matrices are fixed magnitudes |M| combined with the current signs of W, not free "
            "matrices standing for W^T; use feedback='fa'",
    "dfa": "direct feedback alignment's matrices D_j project the output error (shape (n_j, n_L), not "
           "that of W^T) and no feedback term is defined for them; use feedback='fa'",
    "drtp": "DRTP's matrices project the target (shape (n_j, n_L), not that of W^T) and no feedback "
            "term is defined for them; use feedback='fa'",
}


def plastic_feedback_allowed(kind: str) -> bool:
    """Whether pathway ``kind`` accepts plastic feedback matrices: its signal is g_j = B_{j+1}
    e_{j+1} with free B shaped like W_{j+1}^T (ValueError for an unknown pathway)."""
    p = pathways.get(kind)
    return bool(p.plastic_matrices) or (kind in _PLASTIC_BUILTIN and not p.plastic_refusal)


def check_plastic_feedback(kind: str, terms) -> tuple[int, ...]:
    """The sorted feedback terms of ``terms`` (a spec for
    :func:`labkit.feedback_terms.make_feedback_terms`) if pathway ``kind`` accepts them, else a
    ValueError that says why and what to use instead. ``()`` (fixed feedback) fits every pathway."""
    ts = make_feedback_terms(terms)
    if ts and not plastic_feedback_allowed(kind):
        p = pathways.get(kind)
        reason = p.plastic_refusal or _REFUSALS.get(kind) or (
            f"pathway {kind!r} does not declare plastic_matrices = True; use feedback='fa'")
        raise ValueError(f"plastic feedback (terms {list(ts)}) is refused for pathway {kind!r}: {reason}")
    return ts


def check_kind(kind: str) -> str:
    """``kind`` if it names a registered pathway, else a ValueError listing the choices."""
    pathways.get(kind)
    return kind


def get_pathway(kind: str) -> Pathway:
    """The registered pathway called ``kind``."""
    return pathways.get(kind)


def init_feedback(
    kind: str,
    sizes: Sequence[int],
    generators: Sequence[torch.Generator],
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """The pathway's fixed matrices for every trial (``[]`` for those without any), each
    ``(T, *shape)``, trial i drawn from ``generators[i]`` only. E.g. ``"fa"``: ``[B_1, ..., B_L]``
    with ``B_l: (T, n_{l-1}, n_l)``; ``"dfa"``: ``[D_0, ..., D_{L-1}]`` with ``D_l: (T, n_l, n_L)``."""
    return pathways.get(kind).init(sizes, generators, dtype)


def mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """M v for M: (T, a, b) and v: (T, b) or (T, N, b) -> (T, a) or (T, N, a) (differentiable)."""
    if v.dim() == 2:
        return ops.matvec(M, v)
    return torch.bmm(v, M.transpose(1, 2))


def mtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """M^T v for M: (T, a, b) and v: (T, a) or (T, N, a) -> (T, b) or (T, N, b) (differentiable)."""
    if v.dim() == 2:
        return ops.vecmat(v, M)
    return torch.bmm(v, M)


def backward(
    kind: str,
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    e_L: torch.Tensor,
    beta: float = BETA,
    need_e0: bool = True,
    target: torch.Tensor | None = None,
) -> list[torch.Tensor | None]:
    """Teaching signals ``[e_0, e_1, ..., e_L]`` from the output error ``e_L``.

    ``ys`` are the activities of :func:`labkit.networks.forward` (``ys[0]`` is the input).
    ``e_0`` is the synthetic input-layer error, or ``None`` when ``need_e0`` is False
    (it costs the largest mat-vec of the pass and only some plasticity terms use it).
    ``target`` is the one-hot label (shape of ``e_L``); when omitted it is recovered as
    round(y_L - e_L) (pathways such as DRTP read it).
    """
    p = pathways.get(kind)
    if target is None:
        target = torch.round(ys[-1] - e_L)
    L = len(Ws)
    es: list[torch.Tensor | None] = [None] * (L + 1)
    es[L] = e_L
    lowest = 0 if need_e0 else 1
    for j in range(L - 1, lowest - 1, -1):
        es[j] = p.signal(j, Ws, Bs, es, target, mv, mtv) * softplus_deriv_from_output(ys[j], beta)
    return es
