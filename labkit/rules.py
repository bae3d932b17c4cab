"""The plasticity rules: which terms act, and their algebra in three forms.

The terms themselves (index, name, equation, ...) are declared in :mod:`labkit.terms`. For
weight layer l ("pre" = layer l-1, "post" = layer l), with one sample per trial,

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

Three forms of the same algebra live here, so that a new term is added in one file
(docs/architecture.md, "Add a term"):

1. :func:`pool_term` computes each term exactly as printed (the reference, for tests).
2. :func:`fused_update` computes the whole weighted sum as one rank-<=3 update plus decay
   (the autograd engine differentiates through it): with s = 1^T y_l, u = W^T y_l,
   s6 = u . e_{l-1}, s8 = e_l . z_l,

       sum_r theta_r F^r = e_l a^T + y_l b^T + 1 c^T - theta_3 W
       a = -(theta_0 + theta_5 s + theta_7 s6) y_{l-1} - theta_2 e_{l-1}
       b = -(theta_1 + theta_6 s6 + theta_8 s8) e_{l-1} + theta_9 (y_{l-1} - u)
       c = -theta_4 e_{l-1}

3. :func:`layer_factors` and :func:`layer_adjoint`: the same update as factors (P, Q) with
   W' = (1 - theta_3) W + P Q, and its hand-derived adjoint, for the engine of
   :mod:`labkit.adjoint` (the derivation is in that module's docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from . import ops
from .terms import DEFAULT_FEEDBACK, N_TERMS, NAMED_RULES, TERM_NAMES, USES_PRE_ERROR  # noqa: F401  (re-exported)
from .feedback_terms import B_DECAY, B_EHEBB, B_OJA, KP, N_FEEDBACK_TERMS


@dataclass(frozen=True)
class Rule:
    """Which terms are plastic in each layer. Coefficients theta live outside (meta-learned).

    ``layer_terms[l-1]`` is the tuple of term indices active in weight layer l; one theta
    vector is shared by all layers (as in the paper), so a term absent from a layer simply does
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
        raise ValueError(f"a rule needs at least one term; choose from 0..{N_TERMS - 1}")
    bad = [r for r in ts if not 0 <= r < N_TERMS]
    if bad:
        raise ValueError(f"unknown plasticity terms {bad}; terms are numbered 0..{N_TERMS - 1}")
    return ts


def _term_numbers(text: str) -> list[int]:
    """``"0, 2,9"`` -> ``[0, 2, 9]`` (empty items ignored); ValueError for a non-number."""
    return [int(s) for s in text.replace(" ", "").split(",") if s != ""]


def make_rule(spec: str | Sequence[int] | Sequence[Sequence[int]], n_layers: int) -> Rule:
    """A rule from a name (``"fa"``, ``"bp"``, ``"dfa"``, ``"ehebb"``, ``"oja"``, ``"bio"``,
    ``"pool"``), a term list (``"0,2,9"`` or ``[0, 2, 9]``, same in every layer) or one
    term list per layer (``[[0, 2], [0], [0, 9]]``, or as text with layers separated by
    ``/``: ``"0,2/0/0,9"``, weight layer 1 first)."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in NAMED_RULES:
            return Rule((NAMED_RULES[key],) * n_layers, name=key)
        if "/" in key:
            try:
                layers = [_term_numbers(part) for part in key.split("/")]
            except ValueError:
                raise ValueError(
                    f"unknown per-layer rule {spec!r}; give each weight layer's term numbers, layers "
                    "separated by '/', e.g. '0,2/0/0,9' for a network with 3 weight layers"
                ) from None
            return make_rule(layers, n_layers)
        try:
            spec = _term_numbers(key)
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
    raise ValueError(f"unknown plasticity term {r}; terms are numbered 0..{N_TERMS - 1}")


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


# ---------------------------------------------------------------------------------------------
# Form 3: factors and hand-derived adjoint of one layer's update (for labkit.adjoint).
#
# Arguments, per layer i of one plasticity step (code indices as in labkit.adjoint):
# ``th``: theta's columns, N_TERMS tensors (T, 1); ``W``: the layer's weights before the step;
# ``ys, es, zs``: the step's activities, errors and pre-activations (lists over layers);
# ``saved``: what layer_factors returned. Gradients ("bars") are lists holding None for zero.


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-trial dot product (T, n), (T, n) -> (T, 1)."""
    return (a * b).sum(-1, keepdim=True)


def _add(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if acc is None else acc + x


def _weighted(th: list, ts: set, pairs) -> torch.Tensor | None:
    """sum of th[r] * factor over the (r, factor) pairs with r in ts (factor None means 1)."""
    out = None
    for r, factor in pairs:
        if r in ts:
            out = _add(out, th[r] if factor is None else th[r] * factor)
    return out


class LayerPlan:
    """Which pieces of the fused update a layer's terms need (fixed for a whole episode)."""

    __slots__ = ("ts", "u", "s6", "a", "b", "c", "decay", "pre_err")

    def __init__(self, ts: Iterable[int]):
        s = set(ts)
        self.ts = s
        self.u = bool(s & {6, 7, 9})  # u = W^T post
        self.s6 = bool(s & {6, 7})  # s6 = u . e_pre
        self.a = bool(s & {0, 2, 5, 7})  # a factor multiplying e_post
        self.b = bool(s & {1, 6, 8, 9})  # a factor multiplying post
        self.c = 4 in s  # a factor multiplying 1
        self.decay = 3 in s
        self.pre_err = bool(s & USES_PRE_ERROR)


# Terms whose update of a layer is e_post (-alpha pre)^T with alpha free of W: with only
# these in the first layer, its weights stay W_0 - sum_s alpha_s e_s x_s^T (kernel form).
KERNEL_TERMS = frozenset({0, 5})


def layer_factors(plan: LayerPlan, th: list, W: torch.Tensor, ys: list, es: list, zs: list, i: int) -> tuple:
    """Layer i's update as factors: W' = (1 - th3) W + Pm Qm, Pm (T, n, k), Qm (T, k, m).

    Returns ``(u, s6, S, s8, alpha, kappa, Pm, Qm)`` (None where a piece is not needed),
    everything :func:`layer_adjoint` reads back.
    """
    pre, post, e_pre, e_post = ys[i], ys[i + 1], es[i], es[i + 1]
    u = ops.rows_times_W(post, W) if plan.u else None
    s6 = _dot(u, e_pre) if plan.s6 else None
    S = post.sum(-1, keepdim=True) if 5 in plan.ts else None
    s8 = _dot(e_post, zs[i]) if 8 in plan.ts else None
    P, Q = [], []
    alpha = kappa = None
    if plan.a:
        alpha = _weighted(th, plan.ts, ((0, None), (5, S), (7, s6)))
        a = None if alpha is None else -alpha * pre
        if 2 in plan.ts:
            a = _add(a, -th[2] * e_pre)
        P.append(e_post)
        Q.append(a)
    if plan.b:
        kappa = _weighted(th, plan.ts, ((1, None), (6, s6), (8, s8)))
        b = None if kappa is None else -kappa * e_pre
        if 9 in plan.ts:
            b = _add(b, th[9] * (pre - u))
        P.append(post)
        Q.append(b)
    if plan.c:
        P.append(torch.ones_like(post))
        Q.append(-th[4] * e_pre)
    Pm = torch.stack(P, dim=-1) if P else None  # (T, n, k)
    Qm = torch.stack(Q, dim=1) if Q else None  # (T, k, m)
    return u, s6, S, s8, alpha, kappa, Pm, Qm


def layer_adjoint(
    plan: LayerPlan, th: list, W: torch.Tensor, Wb: torch.Tensor, ys: list, es: list, zs: list, i: int,
    saved: tuple, thbar: list, ys_bar: list, es_bar: list, zs_bar: list, ubars: list,
) -> None:
    """Adjoint of layer i's update, given ``Wb`` = dLoss/dW' (W' the updated weights).

    Adds in place into ``thbar`` (per term, (T, 1)), ``ys_bar``, ``es_bar``, ``zs_bar`` and
    ``ubars`` (the gradient of u = W^T post, (T, m)); the weight gradient's own terms are
    formed by the engine from ``zs_bar``/``ubars``. Derivation: :mod:`labkit.adjoint`.
    """
    u, s6, S, s8, alpha, kappa, Pm, Qm = saved
    pre, post, e_pre, e_post = ys[i], ys[i + 1], es[i], es[i + 1]
    if plan.decay:
        thbar[3] = _add(thbar[3], -(W * Wb).sum((1, 2)).unsqueeze(-1))
    if Pm is None:
        return
    G = torch.bmm(Qm, Wb.transpose(1, 2))  # (T, k, n): rows Wbar' q_k
    H = torch.bmm(Pm.transpose(1, 2), Wb)  # (T, k, m): rows Wbar'^T p_k
    k = 0
    e_pre_bar = pre_bar = s6bar = None
    if plan.a:
        es_bar[i + 1] = _add(es_bar[i + 1], G[:, k])
        abar = H[:, k]
        k += 1
        if 2 in plan.ts:
            thbar[2] = _add(thbar[2], -_dot(abar, e_pre))
            e_pre_bar = _add(e_pre_bar, -th[2] * abar)
        if alpha is not None:
            alphabar = -_dot(abar, pre)
            pre_bar = _add(pre_bar, -alpha * abar)
            if 0 in plan.ts:
                thbar[0] = _add(thbar[0], alphabar)
            if 5 in plan.ts:
                thbar[5] = _add(thbar[5], alphabar * S)
                ys_bar[i + 1] = _add(ys_bar[i + 1], (th[5] * alphabar).expand_as(post))
            if 7 in plan.ts:
                thbar[7] = _add(thbar[7], alphabar * s6)
                s6bar = _add(s6bar, th[7] * alphabar)
    if plan.b:
        ys_bar[i + 1] = _add(ys_bar[i + 1], G[:, k])
        bbar = H[:, k]
        k += 1
        if kappa is not None:
            kappabar = -_dot(bbar, e_pre)
            e_pre_bar = _add(e_pre_bar, -kappa * bbar)
            if 1 in plan.ts:
                thbar[1] = _add(thbar[1], kappabar)
            if 6 in plan.ts:
                thbar[6] = _add(thbar[6], kappabar * s6)
                s6bar = _add(s6bar, th[6] * kappabar)
            if 8 in plan.ts:
                thbar[8] = _add(thbar[8], kappabar * s8)
                s8bar = th[8] * kappabar
                es_bar[i + 1] = _add(es_bar[i + 1], s8bar * zs[i])
                zs_bar[i] = s8bar * e_post
        if 9 in plan.ts:
            thbar[9] = _add(thbar[9], _dot(bbar, pre - u))
            ubars[i] = -th[9] * bbar
            pre_bar = _add(pre_bar, th[9] * bbar)
    if plan.c:
        cbar = H[:, k]
        thbar[4] = _add(thbar[4], -_dot(cbar, e_pre))
        e_pre_bar = _add(e_pre_bar, -th[4] * cbar)
    if s6bar is not None:
        e_pre_bar = _add(e_pre_bar, s6bar * u)
        ubars[i] = _add(ubars[i], s6bar * e_pre)
    if e_pre_bar is not None:
        es_bar[i] = _add(es_bar[i], e_pre_bar)
    if pre_bar is not None and i >= 1:
        ys_bar[i] = _add(ys_bar[i], pre_bar)
    if ubars[i] is not None:
        ys_bar[i + 1] = _add(ys_bar[i + 1], ops.rows_times_Wt(ubars[i], W))


def kernel_factors(plan: LayerPlan, th: list, post: torch.Tensor) -> tuple:
    """First layer in kernel form (terms in :data:`KERNEL_TERMS`): only alpha (and S) are
    needed, the update being e_post (-alpha x)^T. Same tuple layout as :func:`layer_factors`."""
    S = post.sum(-1, keepdim=True) if 5 in plan.ts else None
    alpha = _weighted(th, plan.ts, ((0, None), (5, S)))
    return None, None, S, None, alpha, None, None, None


def kernel_adjoint(
    plan: LayerPlan, th: list, v0: torch.Tensor, ys: list, es: list, saved: tuple,
    thbar: list, ys_bar: list, es_bar: list,
) -> None:
    """Adjoint of the kernel-form first layer, given v0 = Wbar'_0 x_t (T, n_1):
    with a = -alpha x, Wbar' a = -alpha v0 and abar . pre = e_post . v0."""
    S, alpha = saved[2], saved[4]
    post, e_post = ys[1], es[1]
    es_bar[1] = _add(es_bar[1], -alpha * v0)
    alphabar = -_dot(e_post, v0)
    if 0 in plan.ts:
        thbar[0] = _add(thbar[0], alphabar)
    if 5 in plan.ts:
        thbar[5] = _add(thbar[5], alphabar * S)
        ys_bar[1] = _add(ys_bar[1], (th[5] * alphabar).expand_as(post))


# ---------------------------------------------------------------------------------------------
# Plastic feedback (labkit.feedback_terms): the terms G^s of the feedback matrices B, in the
# same three forms. B: (T, n_pre, n_post), the shape of W^T; per step and layer,
#
#     B' = (1 - phi_1) B + a e_post^T + b post^T
#     a = -phi_0 pre - phi_2 e_pre,      b = phi_3 (pre - v),   v = B post
#
# (the forward update with W read as B^T, transposed: see labkit.feedback_terms).


def feedback_term(
    s: int,
    B: torch.Tensor,
    y_pre: torch.Tensor,
    y_post: torch.Tensor,
    e_pre: torch.Tensor | None,
    e_post: torch.Tensor,
) -> torch.Tensor:
    """Feedback term G^s for one sample per trial, exactly as printed in
    :mod:`labkit.feedback_terms`.

    B: (T, n_pre, n_post); y_pre, e_pre: (T, n_pre); y_post, e_post: (T, n_post).
    Returns (T, n_pre, n_post).
    """

    def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.unsqueeze(-1) * b.unsqueeze(-2)

    if s == KP:
        return -outer(y_pre, e_post)
    if s == B_DECAY:
        return -B
    if s == B_EHEBB:
        return -outer(e_pre, e_post)
    if s == B_OJA:
        return outer(y_pre, y_post) - B @ outer(y_post, y_post)
    raise ValueError(f"unknown feedback term {s}; feedback terms are numbered 0..{N_FEEDBACK_TERMS - 1}")


def fused_feedback_update(
    phi: torch.Tensor,
    terms: Sequence[int],
    B: torch.Tensor,
    y_pre: torch.Tensor,
    y_post: torch.Tensor,
    e_pre: torch.Tensor | None,
    e_post: torch.Tensor,
) -> torch.Tensor:
    """The new feedback matrices B + sum_{s in terms} phi_s G^s, as one batched low-rank product
    plus decay (B' = (1 - phi_1) B + a e_post^T + b post^T, above).

    phi: (T, N_FEEDBACK_TERMS); B: (T, n_pre, n_post); y_pre, e_pre: (T, n_pre); y_post, e_post:
    (T, n_post). Terms outside ``terms`` cost nothing. Differentiable (autograd records it).
    """
    ts = set(terms)
    ph = {s: phi[:, s : s + 1] for s in ts}  # (T, 1)
    cols_u: list[torch.Tensor] = []
    cols_v: list[torch.Tensor] = []
    a = -ph[KP] * y_pre if KP in ts else None
    if B_EHEBB in ts:
        a = -ph[B_EHEBB] * e_pre if a is None else a - ph[B_EHEBB] * e_pre
    if a is not None:
        cols_u.append(a)
        cols_v.append(e_post)
    if B_OJA in ts:
        v = ops.matvec(B, y_post)  # B post: (T, n_pre)
        cols_u.append(ph[B_OJA] * (y_pre - v))
        cols_v.append(y_post)
    base = B * (1.0 - ph[B_DECAY]).unsqueeze(-1) if B_DECAY in ts else B
    if not cols_u:
        return base
    U = torch.stack(cols_u, dim=-1)  # (T, n_pre, k)
    V = torch.stack(cols_v, dim=1)  # (T, k, n_post)
    return ops.lowrank_update(base, U, V)


class FeedbackPlan:
    """Which pieces of the feedback update the active feedback terms need (fixed per episode)."""

    __slots__ = ("ts", "a", "b", "decay", "pre_err")

    def __init__(self, ts: Iterable[int]):
        s = set(ts)
        self.ts = s
        self.a = bool(s & {KP, B_EHEBB})  # a factor multiplying e_post^T
        self.b = B_OJA in s  # a factor multiplying post^T
        self.decay = B_DECAY in s
        self.pre_err = B_EHEBB in s


def feedback_factors(plan: FeedbackPlan, ph: list, B: torch.Tensor, ys: list, es: list, j: int) -> tuple:
    """Feedback matrix j's update as factors: B' = (1 - ph1) B + Pm Qm, Pm (T, n_j, k),
    Qm (T, k, n_{j+1}); ``ph`` is phi's columns (N_FEEDBACK_TERMS tensors (T, 1)), B = Bs[j]
    (it plays the role of W_j^T, ``ys[j]`` pre, ``ys[j+1]`` post). Returns ``(v, Pm, Qm)``
    (v = B post, or None without the Oja term; Pm, Qm None without low-rank terms)."""
    pre, post, e_pre, e_post = ys[j], ys[j + 1], es[j], es[j + 1]
    P, Q = [], []
    v = None
    if plan.a:
        a = -ph[KP] * pre if KP in plan.ts else None
        if B_EHEBB in plan.ts:
            a = _add(a, -ph[B_EHEBB] * e_pre)
        P.append(a)
        Q.append(e_post)
    if plan.b:
        v = ops.rows_times_Wt(post, B)
        P.append(ph[B_OJA] * (pre - v))
        Q.append(post)
    Pm = torch.stack(P, dim=-1) if P else None
    Qm = torch.stack(Q, dim=1) if Q else None
    return v, Pm, Qm


def feedback_adjoint(
    plan: FeedbackPlan, ph: list, B: torch.Tensor, Bb: torch.Tensor, ys: list, es: list, j: int,
    saved: tuple, phbar: list, ys_bar: list, es_bar: list,
) -> torch.Tensor | None:
    """Adjoint of feedback matrix j's update, given ``Bb`` = dLoss/dB' (B' the updated matrix).

    Adds in place into ``phbar`` (per feedback term, (T, 1)), ``ys_bar`` and ``es_bar``;
    returns vbar (T, n_j), the gradient of v = B post (the engine adds vbar post^T to B's
    gradient), or None. With Pbar = Bb Qm^T and Qbar = Pm^T Bb:

        phi1bar -= <B, Bb>;  e_post_bar += Bb^T a;  post_bar += Bb^T b + B^T vbar
        abar = Bb e_post:  phi0bar -= abar . pre;  phi2bar -= abar . e_pre
                           pre_bar -= phi0 abar;   e_pre_bar -= phi2 abar
        bbar = Bb post:    phi3bar += bbar . (pre - v);  pre_bar += phi3 bbar;  vbar = -phi3 bbar
    """
    v, Pm, Qm = saved
    pre, post, e_pre = ys[j], ys[j + 1], es[j]
    if plan.decay:
        phbar[B_DECAY] = _add(phbar[B_DECAY], -(B * Bb).sum((1, 2)).unsqueeze(-1))
    if Pm is None:
        return None
    Pbar = torch.bmm(Bb, Qm.transpose(1, 2))  # (T, n_j, k): columns Bb q_k
    Qbar = torch.bmm(Pm.transpose(1, 2), Bb)  # (T, k, n_{j+1}): rows Bb^T p_k
    k = 0
    pre_bar = e_pre_bar = vbar = None
    if plan.a:
        es_bar[j + 1] = _add(es_bar[j + 1], Qbar[:, k])
        abar = Pbar[:, :, k]
        k += 1
        if KP in plan.ts:
            phbar[KP] = _add(phbar[KP], -_dot(abar, pre))
            pre_bar = _add(pre_bar, -ph[KP] * abar)
        if B_EHEBB in plan.ts:
            phbar[B_EHEBB] = _add(phbar[B_EHEBB], -_dot(abar, e_pre))
            e_pre_bar = _add(e_pre_bar, -ph[B_EHEBB] * abar)
    if plan.b:
        bbar = Pbar[:, :, k]
        phbar[B_OJA] = _add(phbar[B_OJA], _dot(bbar, pre - v))
        pre_bar = _add(pre_bar, ph[B_OJA] * bbar)
        vbar = -ph[B_OJA] * bbar
        ys_bar[j + 1] = _add(ys_bar[j + 1], Qbar[:, k] + ops.rows_times_W(vbar, B))
    if e_pre_bar is not None:
        es_bar[j] = _add(es_bar[j], e_pre_bar)
    if pre_bar is not None and j >= 1:
        ys_bar[j] = _add(ys_bar[j], pre_bar)
    return vbar
