"""Direct feedback alignment (DFA): the output error goes straight to every layer.

    g_j = D_j e_L,   D_j: (n_j, n_L) fixed random, drawn once per trial Xavier-uniform.

D_j does not have the shape of W_{j+1}^T, so there is no "W vs B^T" angle.
"""
from __future__ import annotations

from . import Pathway, output_projection_shapes, accumulate, register


@register
class DirectFeedbackAlignment(Pathway):
    name = "dfa"
    label = "direct feedback alignment"
    equation = "g_j = D_j e_L, D fixed random"
    reference = "Nøkland 2016"
    order = 2

    def matrix_shapes(self, sizes):
        return output_projection_shapes(sizes)

    def signal(self, j, Ws, Bs, es, target, mv, mtv):
        return mv(Bs[j], es[-1])

    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):
        accumulate(es_bar, len(es) - 1, mtv(Bs[j], gbar))
        return None
