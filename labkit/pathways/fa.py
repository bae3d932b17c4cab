"""Feedback alignment (FA): the error goes back through fixed random matrices.

    g_j = B_{j+1} e_{j+1},   B_{j+1}: (n_j, n_{j+1}), the shape of W_{j+1}^T, drawn once per
    trial Xavier-uniform and never changed.
"""
from __future__ import annotations

from . import Pathway, transposed_weight_shapes, accumulate, register


@register
class FeedbackAlignment(Pathway):
    name = "fa"
    label = "feedback alignment"
    equation = "g_j = B_{j+1} e_{j+1}, B fixed random"
    reference = "Lillicrap et al. 2016"
    order = 1

    def matrix_shapes(self, sizes):
        return transposed_weight_shapes(sizes)

    def signal(self, j, Ws, Bs, es, target, mv, mtv):
        return mv(Bs[j], es[j + 1])

    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):
        accumulate(es_bar, j + 1, mtv(Bs[j], gbar))
        return None

    def feedback_matrices(self, Ws, Bs):
        return list(Bs)
