"""Sign-symmetry with fixed random magnitudes (frSF).

    g_j = (|M_{j+1}| o sign(W_{j+1})^T) e_{j+1},

M_{j+1}: (n_j, n_{j+1}) drawn once per trial (Xavier-uniform, the same draw as feedback
alignment's B); the signs follow the current forward weights at every step (Liao, Leibo &
Poggio 2016; Xiao et al. 2018). This pathway stores |M| as its matrices.

sign() has zero derivative almost everywhere, so the exact meta-gradient sends nothing through
it (as autograd does).
"""
from __future__ import annotations

import torch

from . import Pathway, transposed_weight_shapes, accumulate, register


def _effective(W: torch.Tensor, M_abs: torch.Tensor) -> torch.Tensor:
    """|M| o sign(W)^T, (T, n_j, n_{j+1})."""
    return M_abs * torch.sign(W).transpose(1, 2)


@register
class RandomMagnitudeSignSymmetry(Pathway):
    name = "frsf"
    label = "sign-symmetry, fixed random magnitude"
    equation = "g_j = (|M_{j+1}| o sign(W_{j+1})^T) e_{j+1}, M fixed random"
    reference = "Liao, Leibo & Poggio 2016; Xiao et al. 2018"
    order = 11

    def matrix_shapes(self, sizes):
        return transposed_weight_shapes(sizes)

    def init(self, sizes, generators, dtype=torch.float32):
        return [M.abs() for M in super().init(sizes, generators, dtype)]

    def signal(self, j, Ws, Bs, es, target, mv, mtv):
        return mv(_effective(Ws[j], Bs[j]), es[j + 1])

    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):
        accumulate(es_bar, j + 1, mtv(_effective(Ws[j], Bs[j]), gbar))
        return None

    def feedback_matrices(self, Ws, Bs):
        return [_effective(W, M) for W, M in zip(Ws, Bs)]
