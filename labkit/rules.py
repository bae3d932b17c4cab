"""The ten-term plasticity pool (PAPER.md, "The plasticity-term pool") and named rules.

For weight layer l ("pre" = layer l-1, "post" = layer l), with one sample per trial,

    W_l <- W_l + sum_r theta_r F^r

| r | F^r |
|---|-----|
| 0 | -e_l y_{l-1}^T                              pseudo-gradient |
| 1 | -y_l e_{l-1}^T                              post activity x pre error |
| 2 | -e_l e_{l-1}^T                              error-based Hebbian (eHebb) |
| 3 | -W_l                                        weight decay |
| 4 | -1 e_{l-1}^T                                pre error broadcast |
| 5 | -(1^T y_l) e_l y_{l-1}^T                    pseudo-gradient x total post activity |
| 6 | -(y_l^T W_l e_{l-1}) y_l e_{l-1}^T          higher order |
| 7 | -(y_l^T W_l e_{l-1}) e_l y_{l-1}^T          higher order |
| 8 | -(e_l^T W_l y_{l-1}) y_l e_{l-1}^T          higher order |
| 9 | y_l y_{l-1}^T - y_l y_l^T W_l               Oja's rule |

:func:`pool_term` computes each term exactly as printed (the reference);
:func:`fused_update` computes the whole weighted sum as one rank-<=3 update plus decay
(DESIGN.md): with s = 1^T y_l, u = W^T y_l, s6 = u . e_{l-1}, s8 = e_l . z_l,

    sum_r theta_r F^r = e_l a^T + y_l b^T + 1 c^T - theta_3 W
    a = -(theta_0 + theta_5 s + theta_7 s6) y_{l-1} - theta_2 e_{l-1}
    b = -(theta_1 + theta_6 s6 + theta_8 s8) e_{l-1} + theta_9 (y_{l-1} - u)
    c = -theta_4 e_{l-1}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from . import ops

N_TERMS = 10
TERM_NAMES: tuple[str, ...] = (
    "pseudo-gradient",
    "post activity x pre error",
    "eHebb",
    "weight decay",
    "pre error broadcast",
    "scaled pseudo-gradient",
    "higher order (y W e) y e",
    "higher order (y W e) e y",
    "higher order (e W y) y e",
    "Oja",
)
# Terms that read the pre-synaptic error e_{l-1} (layer 1 then needs the synthetic e_0).
USES_PRE_ERROR = frozenset({1, 2, 4, 6, 7, 8})

NAMED_RULES: dict[str, tuple[int, ...]] = {
    "fa": (0,),
    "bp": (0,),
    "dfa": (0,),
    "ehebb": (0, 2),
    "oja": (0, 9),
    "bio": (0, 2, 9),
    "pool": tuple(range(N_TERMS)),
}
# The feedback pathway a named rule implies when none is given.
DEFAULT_FEEDBACK: dict[str, str] = {"bp": "bp", "dfa": "dfa"}


@dataclass(frozen=True)
class Rule:
    """Which terms are plastic in each layer. Coefficients theta live outside (meta-learned).

    ``layer_terms[l-1]`` is the tuple of term indices active in weight layer l; one theta
    vector is shared by all layers (PAPER.md), so a term absent from a layer simply does
    not act there (Table 1 chooses terms layer by layer).
    """

    layer_terms: tuple[tuple[int, ...], ...]
    name: str = "custom"

    @property
    def n_layers(self) -> int:
        return len(self.layer_terms)

    @property
    def terms(self) -> tuple[int, ...]:
        """All terms active in at least one layer, sorted."""
        return tuple(sorted({r for ts in self.layer_terms for r in ts}))

    def mask(self) -> torch.Tensor:
        """(L, 10) boolean: term r acts in layer l."""
        m = torch.zeros(self.n_layers, N_TERMS, dtype=torch.bool)
        for l, ts in enumerate(self.layer_terms):
            m[l, list(ts)] = True
        return m


def _check_terms(terms: Iterable[int]) -> tuple[int, ...]:
    ts = tuple(sorted(set(int(r) for r in terms)))
    if not ts:
        raise ValueError("a rule needs at least one term; choose from 0..9")
    bad = [r for r in ts if not 0 <= r < N_TERMS]
    if bad:
        raise ValueError(f"unknown plasticity terms {bad}; terms are numbered 0..9")
    return ts


def make_rule(spec: str | Sequence[int] | Sequence[Sequence[int]], n_layers: int) -> Rule:
    """A rule from a name (``"fa"``, ``"bp"``, ``"dfa"``, ``"ehebb"``, ``"oja"``, ``"bio"``,
    ``"pool"``), a term list (``"0,2,9"`` or ``[0, 2, 9]``, same in every layer) or one
    term list per layer (``[[0, 2], [0], [0, 9]]``)."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in NAMED_RULES:
            return Rule((NAMED_RULES[key],) * n_layers, name=key)
        try:
            spec = [int(s) for s in key.replace(" ", "").split(",") if s != ""]
        except ValueError:
            raise ValueError(
                f"unknown rule {spec!r}; use a name ({', '.join(NAMED_RULES)}) "
                "or comma-separated term numbers such as '0,2,9'"
            ) from None
    spec = list(spec)
    if spec and all(isinstance(s, (list, tuple)) for s in spec):
        if len(spec) != n_layers:
            raise ValueError(f"per-layer rule has {len(spec)} entries but the network has {n_layers} weight layers")
        return Rule(tuple(_check_terms(s) for s in spec), name="per-layer")
    ts = _check_terms(spec)
    name = next((k for k, v in NAMED_RULES.items() if v == ts and k not in ("bp", "dfa")), "custom")
    return Rule((ts,) * n_layers, name=name if name != "fa" else "fa")


def pool_term(
    r: int,
    W: torch.Tensor,
    y_pre: torch.Tensor,
    y_post: torch.Tensor,
    e_pre: torch.Tensor | None,
    e_post: torch.Tensor,
) -> torch.Tensor:
    """Term F^r for one sample per trial, exactly as printed in the table above.

    W: (T, n_post, n_pre); y_pre, e_pre: (T, n_pre); y_post, e_post: (T, n_post).
    Returns (T, n_post, n_pre).
    """

    def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.unsqueeze(-1) * b.unsqueeze(-2)

    def quad(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # a^T W b -> (T, 1, 1)
        return torch.einsum("ti,tij,tj->t", a, W, b)[:, None, None]

    if r == 0:
        return -outer(e_post, y_pre)
    if r == 1:
        return -outer(y_post, e_pre)
    if r == 2:
        return -outer(e_post, e_pre)
    if r == 3:
        return -W
    if r == 4:
        return -outer(torch.ones_like(y_post), e_pre)
    if r == 5:
        return -y_post.sum(-1)[:, None, None] * outer(e_post, y_pre)
    if r == 6:
        return -quad(y_post, e_pre) * outer(y_post, e_pre)
    if r == 7:
        return -quad(y_post, e_pre) * outer(e_post, y_pre)
    if r == 8:
        return -quad(e_post, y_pre) * outer(y_post, e_pre)
    if r == 9:
        return outer(y_post, y_pre) - outer(y_post, y_post) @ W
    raise ValueError(f"unknown plasticity term {r}; terms are numbered 0..9")


def fused_update(
    theta: torch.Tensor,
    terms: Sequence[int],
    W: torch.Tensor,
    y_pre: torch.Tensor,
    y_post: torch.Tensor,
    e_pre: torch.Tensor | None,
    e_post: torch.Tensor,
    z_post: torch.Tensor,
) -> torch.Tensor:
    """The new weights W + sum_{r in terms} theta_r F^r, as one batched low-rank product.

    theta: (T, 10); W: (T, n_post, n_pre); y_pre, e_pre: (T, n_pre); y_post, e_post, z_post:
    (T, n_post). Terms outside ``terms`` are skipped entirely (no cost). Plain tensor algebra:
    autograd only records it so that the meta-gradient can flow through.
    """
    ts = set(terms)
    th = {r: theta[:, r : r + 1] for r in ts}  # (T, 1)
    cols_u: list[torch.Tensor] = []
    cols_v: list[torch.Tensor] = []

    need_u = bool(ts & {6, 7, 9})
    u = ops.vecmat(y_post, W) if need_u else None  # W^T y_post: (T, n_pre)
    s6 = (u * e_pre).sum(-1, keepdim=True) if ts & {6, 7} else None

    # a multiplies e_post
    coef_a = None
    for r, factor in ((0, None), (5, lambda: y_post.sum(-1, keepdim=True)), (7, lambda: s6)):
        if r in ts:
            c = th[r] if factor is None else th[r] * factor()
            coef_a = c if coef_a is None else coef_a + c
    a = None if coef_a is None else -coef_a * y_pre
    if 2 in ts:
        a = -th[2] * e_pre if a is None else a - th[2] * e_pre
    if a is not None:
        cols_u.append(e_post)
        cols_v.append(a)

    # b multiplies y_post
    coef_b = None
    for r, factor in ((1, None), (6, lambda: s6), (8, lambda: (e_post * z_post).sum(-1, keepdim=True))):
        if r in ts:
            c = th[r] if factor is None else th[r] * factor()
            coef_b = c if coef_b is None else coef_b + c
    b = None if coef_b is None else -coef_b * e_pre
    if 9 in ts:
        oja = th[9] * (y_pre - u)
        b = oja if b is None else b + oja
    if b is not None:
        cols_u.append(y_post)
        cols_v.append(b)

    if 4 in ts:
        cols_u.append(torch.ones_like(y_post))
        cols_v.append(-th[4] * e_pre)

    base = W * (1.0 - th[3]).unsqueeze(-1) if 3 in ts else W
    if not cols_u:
        return base
    U = torch.stack(cols_u, dim=-1)  # (T, n_post, k)
    V = torch.stack(cols_v, dim=1)  # (T, k, n_pre)
    return ops.lowrank_update(base, U, V)
