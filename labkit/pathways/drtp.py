"""Direct random target projection (DRTP): the hidden layers are taught by the target.

    g_j = D_j y*,   D_j: (n_j, n_L) fixed random (drawn as DFA's), y* the one-hot label,

for every hidden layer j (and the synthetic input error); the output layer keeps its error
e_L = y_L - y*. The hidden layers need no error at all, only the label, so nothing waits for
the output (Frenkel, Lefebvre & Bol 2021). The signal does not depend on the network, so its
adjoint is zero: the meta-gradient reaches theta through the forward activities only.
"""
from __future__ import annotations

from . import Pathway, output_projection_shapes, register


@register
class DirectRandomTargetProjection(Pathway):
    name = "drtp"
    label = "direct random target projection"
    equation = "g_j = D_j y*, D fixed random, y* the one-hot target"
    reference = "Frenkel, Lefebvre & Bol 2021"
    order = 12

    def matrix_shapes(self, sizes):
        return output_projection_shapes(sizes)

    def signal(self, j, Ws, Bs, es, target, mv, mtv):
        return mv(Bs[j], target)

    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):
        return None
