"""The plasticity terms and the named rules, declared once (no torch: any tool can read it).

For weight layer l ("pre" = layer l-1, "post" = layer l) and one sample, a rule updates

    W_l <- W_l + sum_r theta_r F^r

with the terms F^r of the table below (docs/architecture.md, "The plasticity terms").
Everything that names, counts or ranges the terms reads :data:`TERMS`: the rules and their
fast algebra (:mod:`labkit.rules`), the results files, the plots, the playground's sliders and
the command line. Adding a term means a row here, its algebra in :mod:`labkit.rules` (the
reference form, the fused update and its adjoint) and its tests.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """One plasticity term F^r.

    ``equation`` is plain text (``e`` errors, ``y`` activities, ``l`` the layer);
    ``latex`` the same for figures; ``short`` a label of a few characters for legends;
    ``reads_pre_error``: the term reads e_{l-1}, so the first layer then needs the
    synthetic input error e_0; ``slider``: the playground's (min, max) for theta_r.
    """

    index: int
    name: str
    short: str
    equation: str
    latex: str
    reads_pre_error: bool
    slider: tuple[float, float]


TERMS: tuple[Term, ...] = (
    Term(0, "pseudo-gradient", "pseudo-grad", "-e_l y_{l-1}^T",
         r"$-e_\ell y_{\ell-1}^\top$", False, (0.0, 0.05)),
    Term(1, "post activity x pre error", "post y x pre e", "-y_l e_{l-1}^T",
         r"$-y_\ell e_{\ell-1}^\top$", True, (-0.01, 0.01)),
    Term(2, "eHebb", "eHebb", "-e_l e_{l-1}^T",
         r"$-e_\ell e_{\ell-1}^\top$", True, (-0.1, 0.1)),
    Term(3, "weight decay", "decay", "-W_l",
         r"$-W_\ell$", False, (-1e-3, 1e-3)),
    Term(4, "pre error broadcast", "pre e bcast", "-1 e_{l-1}^T",
         r"$-\mathbf{1} e_{\ell-1}^\top$", True, (-0.01, 0.01)),
    Term(5, "scaled pseudo-gradient", "scaled pseudo-grad", "-(1^T y_l) e_l y_{l-1}^T",
         r"$-(\mathbf{1}^\top y_\ell)\, e_\ell y_{\ell-1}^\top$", False, (-1e-3, 1e-3)),
    Term(6, "higher order (y W e) y e", "higher order", "-(y_l^T W_l e_{l-1}) y_l e_{l-1}^T",
         r"$-(y_\ell^\top W_\ell e_{\ell-1})\, y_\ell e_{\ell-1}^\top$", True, (-1e-3, 1e-3)),
    Term(7, "higher order (y W e) e y", "higher order", "-(y_l^T W_l e_{l-1}) e_l y_{l-1}^T",
         r"$-(y_\ell^\top W_\ell e_{\ell-1})\, e_\ell y_{\ell-1}^\top$", True, (-1e-3, 1e-3)),
    Term(8, "higher order (e W y) y e", "higher order", "-(e_l^T W_l y_{l-1}) y_l e_{l-1}^T",
         r"$-(e_\ell^\top W_\ell y_{\ell-1})\, y_\ell e_{\ell-1}^\top$", True, (-1e-3, 1e-3)),
    Term(9, "Oja", "Oja", "y_l y_{l-1}^T - y_l y_l^T W_l",
         r"$y_\ell y_{\ell-1}^\top - y_\ell y_\ell^\top W_\ell$", False, (-0.01, 0.01)),
)
N_TERMS = len(TERMS)
TERM_NAMES: tuple[str, ...] = tuple(t.name for t in TERMS)
# Terms that read the pre-synaptic error e_{l-1} (layer 1 then needs the synthetic e_0).
USES_PRE_ERROR = frozenset(t.index for t in TERMS if t.reads_pre_error)

#: The named rules: which terms each one meta-learns (the same in every layer).
NAMED_RULES: dict[str, tuple[int, ...]] = {
    "fa": (0,),
    "bp": (0,),
    "dfa": (0,),
    "ehebb": (0, 2),
    "oja": (0, 9),
    "bio": (0, 2, 9),
    "pool": tuple(range(N_TERMS)),
}
#: The feedback pathway a named rule implies when none is given (else "fa").
DEFAULT_FEEDBACK: dict[str, str] = {"bp": "bp", "dfa": "dfa"}


def theta_columns() -> list[str]:
    """The results files' coefficient columns, ``theta_0`` .. ``theta_{N-1}``."""
    return [f"theta_{t.index}" for t in TERMS]


assert all(t.index == i for i, t in enumerate(TERMS)), "TERMS must be listed in index order"
