"""Backprop (BP): the error goes back through the current forward weights.

    g_j = W_{j+1}^T e_{j+1}

Not biologically plausible (the weight-transport problem): the backward pathway must know
the forward weights exactly. It is the reference every other pathway is measured against.
"""
from __future__ import annotations

from . import Pathway, accumulate, register


@register
class Backprop(Pathway):
    name = "bp"
    label = "backprop"
    equation = "g_j = W_{j+1}^T e_{j+1}"
    reference = "Rumelhart, Hinton & Williams 1986"
    order = 0
    transports_weights = True

    def signal(self, j, Ws, Bs, es, target, mv, mtv):
        return mtv(Ws[j], es[j + 1])

    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):
        # g = W^T e: ebar += W gbar, and Wbar += e gbar^T
        accumulate(es_bar, j + 1, mv(Ws[j], gbar))
        return es[j + 1], gbar

    def feedback_matrices(self, Ws, Bs):
        return [W.transpose(1, 2) for W in Ws]
