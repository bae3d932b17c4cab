"""Sign-symmetry, uniform magnitude (uSF): feedback with the signs of the forward weights.

    g_j = s_{j+1} sign(W_{j+1})^T e_{j+1},   s = sqrt(2 / (n_j + n_{j+1})),

with the current W at every step; s is the standard deviation of the layer's Xavier-uniform
initialisation, so the feedback has the forward weights' initial scale. The backward pathway
needs only the signs of the forward synapses, not their magnitudes (Liao, Leibo & Poggio 2016;
Xiao et al. 2018). No matrices are drawn.

sign() has zero derivative almost everywhere, so the exact meta-gradient sends nothing through
it (as autograd does): the signal's adjoint reaches e_{j+1} only.
"""
from __future__ import annotations

import math

import torch

from . import Pathway, accumulate, register


def _scale(W: torch.Tensor) -> float:
    return math.sqrt(2.0 / (W.shape[-1] + W.shape[-2]))


@register
class UniformSignSymmetry(Pathway):
    name = "usf"
    label = "sign-symmetry, uniform"
    equation = "g_j = s sign(W_{j+1})^T e_{j+1}, s the initial weight scale"
    reference = "Liao, Leibo & Poggio 2016; Xiao et al. 2018"
    order = 10

    def signal(self, j, Ws, Bs, es, target, mv, mtv):
        return mtv(torch.sign(Ws[j]), es[j + 1]) * _scale(Ws[j])

    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):
        accumulate(es_bar, j + 1, mv(torch.sign(Ws[j]), gbar) * _scale(Ws[j]))
        return None

    def feedback_matrices(self, Ws, Bs):
        return [torch.sign(W).transpose(1, 2) * _scale(W) for W in Ws]
