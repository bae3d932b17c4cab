"""The plasticity terms of the feedback matrices, declared once (no torch: any tool can read it).

Feedback alignment sends layer l's error back through a matrix B_l shaped like W_l^T,
(n_{l-1}, n_l): g_{l-1} = B_l e_l. With *plastic feedback*, B_l changes after every sample,
at the same step as W_l and from the same activities and errors (those of the pre-update
W and B):

    B_l <- B_l + sum_s phi_s G^s,

with phi a second meta-learned coefficient vector (one per trial, shared by all layers, like
theta) and the terms G^s of the table below. Each term mirrors a forward term of
:mod:`labkit.terms` (``mirrors``): G^s is that forward term with W_l read as B_l^T, transposed
to B's shape, so that ``phi_s = theta_mirrors`` makes B_l^T follow exactly the update W_l gets
from that term. In particular, with the forward rule {0, 3} (pseudo-gradient and decay) and
the feedback rule {0, 1} (Kolen-Pollack and decay) at equal coefficients, the two updates of
W_l and B_l^T differ only by their decay, and W_l - B_l^T shrinks by (1 - theta_3) per sample
(Kolen-Pollack: B^T -> W).

==  =================  ===============================  =========================================
s   name               G^s                              mirror of
==  =================  ===============================  =========================================
0   Kolen-Pollack      -y_{l-1} e_l^T                   F^0 = -e_l y_{l-1}^T (pseudo-gradient)
1   feedback decay     -B_l                             F^3 = -W_l (weight decay)
2   feedback eHebb     -e_{l-1} e_l^T                   F^2 = -e_l e_{l-1}^T (error-based Hebbian)
3   feedback Oja       (y_{l-1} - B_l y_l) y_l^T        F^9 = y_l y_{l-1}^T - y_l y_l^T W_l (Oja)
==  =================  ===============================  =========================================

The Oja term written out: G^3 = y_{l-1} y_l^T - B_l y_l y_l^T = (F^9 with W_l := B_l^T)^T.
It keeps the rows of B_l^T near unit norm the way Oja's rule does for W_l, driven by the same
pre/post activities (not by the errors B carries).

Only pathways whose signal is g_{j} = B_{j+1} e_{j+1} with free matrices B shaped like W^T
accept plastic feedback (feedback alignment, ``"fa"``); :func:`labkit.feedback.check_plastic_feedback`
refuses the others and says what to use instead. The algebra of the terms (reference form,
fused update, hand-derived adjoint) is in :mod:`labkit.rules`; docs/plastic-feedback.md
explains the whole feature.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class FeedbackTerm:
    """One feedback plasticity term G^s (same fields as :class:`labkit.terms.Term`, plus
    ``mirrors``: the index of the forward term F^r it is the transpose of, with W read as B^T)."""

    index: int
    name: str
    short: str
    equation: str
    latex: str
    reads_pre_error: bool
    mirrors: int
    slider: tuple[float, float]


FEEDBACK_TERMS: tuple[FeedbackTerm, ...] = (
    FeedbackTerm(0, "Kolen-Pollack", "KP", "-y_{l-1} e_l^T",
                 r"$-y_{\ell-1} e_\ell^\top$", False, 0, (0.0, 0.05)),
    FeedbackTerm(1, "feedback decay", "B decay", "-B_l",
                 r"$-B_\ell$", False, 3, (-1e-3, 1e-2)),
    FeedbackTerm(2, "feedback eHebb", "B eHebb", "-e_{l-1} e_l^T",
                 r"$-e_{\ell-1} e_\ell^\top$", True, 2, (-0.1, 0.1)),
    FeedbackTerm(3, "feedback Oja", "B Oja", "y_{l-1} y_l^T - B_l y_l y_l^T",
                 r"$y_{\ell-1} y_\ell^\top - B_\ell y_\ell y_\ell^\top$", False, 9, (-0.01, 0.01)),
)
N_FEEDBACK_TERMS = len(FEEDBACK_TERMS)
FEEDBACK_TERM_NAMES: tuple[str, ...] = tuple(t.name for t in FEEDBACK_TERMS)
#: Indices by role (the algebra in labkit.rules reads these, never bare numbers).
KP, B_DECAY, B_EHEBB, B_OJA = 0, 1, 2, 3
# Terms that read the pre-synaptic error e_{l-1} (B_1 then needs the synthetic input error e_0).
FEEDBACK_USES_PRE_ERROR = frozenset(t.index for t in FEEDBACK_TERMS if t.reads_pre_error)

#: Named feedback rules: which feedback terms are plastic (the same in every layer).
NAMED_FEEDBACK_RULES: dict[str, tuple[int, ...]] = {
    "kp": (KP, B_DECAY),  # Kolen-Pollack as proposed: the mirrored pseudo-gradient plus decay
    "ehebb": (B_EHEBB,),
    "oja": (B_OJA,),
    "pool": tuple(range(N_FEEDBACK_TERMS)),
}


def make_feedback_terms(spec: str | Sequence[int] | Iterable[int]) -> tuple[int, ...]:
    """The sorted tuple of feedback terms from a name (``"kp"``, ``"ehebb"``, ``"oja"``,
    ``"pool"``), a comma-separated list of indices or term names (``"0,1"``, ``"kolen-pollack,
    feedback decay"``) or a sequence of indices. ``""``, ``"none"`` and ``()`` give ``()``
    (fixed feedback). A ValueError names the choices for anything else."""
    choices = (f"names {', '.join(NAMED_FEEDBACK_RULES)}, or terms 0..{N_FEEDBACK_TERMS - 1} "
               f"({', '.join(f'{t.index} {t.name}' for t in FEEDBACK_TERMS)})")
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("", "none"):
            return ()
        if key in NAMED_FEEDBACK_RULES:
            return NAMED_FEEDBACK_RULES[key]
        by_name = {t.name.lower(): t.index for t in FEEDBACK_TERMS}
        items = []
        for part in (p.strip() for p in key.split(",")):
            if part == "":
                continue
            if part in by_name:
                items.append(by_name[part])
                continue
            try:
                items.append(int(part))
            except ValueError:
                raise ValueError(f"unknown feedback term {part!r}; use {choices}") from None
        spec = items
    try:
        ts = tuple(sorted(set(int(s) for s in spec)))
    except (TypeError, ValueError):
        raise ValueError(f"unknown feedback terms {spec!r}; use {choices}") from None
    bad = [s for s in ts if not 0 <= s < N_FEEDBACK_TERMS]
    if bad:
        raise ValueError(f"unknown feedback terms {bad}; use {choices}")
    return ts
