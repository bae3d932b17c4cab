"""The meta-gradient by a hand-derived reverse pass through the inner loop (the fast engine).

What autograd does in :func:`labkit.learner.meta_gradient` (``mode="reverse"``) is exact but
costly on a CPU: it keeps a fresh copy of every weight matrix at every plasticity step
(memory grows as K * |W|: 226 MB for one F^bio trial at K = 50) and runs several dozen small
graph nodes per step, whose fixed cost dominates for one trial. This module computes the
same gradient differently:

* The forward pass updates the weights **in place** and keeps only vectors per step
  (activities, errors and the low-rank factors of each update; about 40 kB per trial-step).
* The backward pass walks the steps in reverse and **reconstructs** each step's weights from
  the next ones by undoing the update, W_t = (W_{t+1} - P_t Q_t^T) / (1 - theta_3): every
  update of the pool is low rank plus decay (:mod:`labkit.rules`), so this costs one pass over W.
* The adjoint of every step is written out by hand (derivation below), so a step's backward
  pass is a handful of batched products: two over the incoming weight gradient (for the
  update's factors), two or three over W, and one in-place rank-<=4 update of the gradient.

Reconstruction is exact in exact arithmetic; in floating point each undo rounds once, so the
reconstructed weights differ from the forward ones by a few units in the last place, and the
gradient agrees with autograd's to about 1e-12 (float64) or 1e-5 (float32) relative
(``tests/test_fast_paths.py``). Where the forward pass overflowed, the gradient is
non-finite, exactly as with autograd, and the meta-trainer's guards treat it the same way.

Notation (code indices, as in :func:`labkit.learner.online_train`): ``ys[0]`` is the input,
``zs[i] = Ws[i] ys[i]``, ``ys[i+1] = softplus(zs[i])`` (softmax for the last layer),
``es[L] = ys[L] - onehot``, ``es[j] = g_j * d_j`` with ``d_j = 1 - exp(-beta ys[j])`` and
``g_j`` the feedback pathway's signal (:mod:`labkit.pathways`: ``B_j es[j+1]`` for fa,
``Ws[j]^T es[j+1]`` for bp, ``D_j es[L]`` for dfa, ...). Layer i's
update, with pre = ys[i], e_pre = es[i], post = ys[i+1], e_post = es[i+1], z = zs[i],
u = Ws[i]^T post, s6 = u . e_pre, s8 = e_post . z, S = 1^T post:

    W' = (1 - th3) W + e_post a^T + post b^T + 1 c^T
    a = -alpha pre - th2 e_pre,        alpha = th0 + th5 S + th7 s6
    b = -kappa e_pre + th9 (pre - u),  kappa = th1 + th6 s6 + th8 s8
    c = -th4 e_pre

Its adjoint, given Wbar' = dLoss/dW' (bars are gradients):

    th3bar -= <W, Wbar'>;  e_post_bar += Wbar' a;  post_bar += Wbar' b
    abar = Wbar'^T e_post;  bbar = Wbar'^T post;  cbar = Wbar'^T 1
    alphabar = -abar . pre;  kappabar = -bbar . e_pre
    th0bar += alphabar; th5bar += alphabar S; th7bar += alphabar s6; th2bar -= abar . e_pre
    th1bar += kappabar; th6bar += kappabar s6; th8bar += kappabar s8; th9bar += bbar . (pre - u)
    th4bar -= cbar . e_pre
    e_pre_bar += -th2 abar - kappa bbar - th4 cbar + s6bar u;  pre_bar += -alpha abar + th9 bbar
    post_bar += th5 alphabar 1 + W ubar;  zbar += s8bar e_post;  e_post_bar += s8bar z
    s6bar = th7 alphabar + th6 kappabar;  s8bar = th8 kappabar;  ubar = -th9 bbar + s6bar e_pre
    Wbar = (1 - th3) Wbar' + post ubar^T + (forward and feedback terms below)

The update's algebra and this adjoint live in :mod:`labkit.rules` (``layer_factors``,
``layer_adjoint``), beside the terms' other forms. Then the error pass in reverse
(gbar_j = es_bar[j] d_j, ys_bar[j] += es_bar[j] g_j beta (1 - d_j), and the pathway's own
adjoint, :meth:`labkit.pathways.Pathway.signal_adjoint`: es_bar[j+1] += B_j^T gbar_j for fa;
Ws[j] gbar_j with Wbar[j] += es[j+1] gbar_j^T for bp; D_j^T gbar_j into es_bar[L] for dfa),
es_bar[L] into ys_bar[L], and the forward pass in reverse (zbar = ys_bar d for
softplus layers, y (ybar - y.ybar) for the softmax; Wbar[i] += zbar ys[i]^T;
ys_bar[i] += Ws[i]^T zbar).

Plastic feedback (docs/plastic-feedback.md): the feedback matrices join the state. They are
updated in place beside the weights, undone with B_t = (B_{t+1} - P Q) / (1 - phi_1), and their
update's adjoint (:func:`labkit.rules.feedback_adjoint`) runs after the weights' and before the
error pass, which adds gbar_j es[j+1]^T to Bs[j]'s gradient.
"""
from __future__ import annotations

import torch

from . import pathways
from .episode import Episodic, MetaGradient, resolve_phi
from .metrics import query_loss_and_accuracy
from .networks import softplus
from .ops import rows_times_W, rows_times_Wt
from .rules import (
    KERNEL_TERMS, N_TERMS, FeedbackPlan, LayerPlan, _dot, feedback_adjoint, feedback_factors, kernel_adjoint,
    kernel_factors, layer_adjoint, layer_factors,
)
from .feedback_terms import B_DECAY, N_FEEDBACK_TERMS


def _mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """M v for M (T, a, b), v (T, b) (the pathways' ``mv`` in this engine)."""
    return rows_times_Wt(v, M)


def _mtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """M^T v for M (T, a, b), v (T, a) (the pathways' ``mtv`` in this engine)."""
    return rows_times_W(v, M)


def _add(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if acc is None else acc + x


def _addlr(W: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, sign: float = 1.0) -> None:
    """W += sign P Q in place for P (T, n, k), Q (T, k, m)."""
    if P.shape[-1] == 1:
        W.addcmul_(P, Q, value=sign)
    else:
        W.baddbmm_(P, Q, alpha=sign)


def _kernel_first_layer(terms, N: int, n_in: int, n_out: int) -> bool:
    """Whether to run the first layer in kernel form (see :func:`meta_gradient_adjoint`).

    Only rules whose first-layer terms are in :data:`labkit.rules.KERNEL_TERMS` qualify. Per
    step the kernel form costs about N * (n_in + n_out) multiply-adds (done in a few large
    products) against several passes over the n_out x n_in matrix in the dense form, so it is
    used while N stays below 4 n_in n_out / (n_in + n_out) (559 steps for the paper's 784 -> 170).
    """
    ts = set(terms)
    return bool(ts) and ts <= KERNEL_TERMS and N * (n_in + n_out) <= 4 * n_in * n_out


def _make_steps(layer_terms: tuple[tuple[int, ...], ...], kind: str, beta: float, kernel0: bool = False,
                fb_terms: tuple[int, ...] = ()):
    """One plasticity step forward and its adjoint, as two plain functions for one rule.

    ``th`` is theta's columns, N_TERMS (T, 1) tensors, and ``keep`` = 1 - theta_3, (T, 1, 1).
    ``forward(Ws, Bs, x, onehot, th)`` returns the step's tape (activities, errors and
    the update's factors); ``update(Ws, keep, saved, +1 | -1)`` applies or undoes the
    step's update in place; ``backward(Ws, Wbar, Bs, th, tape)`` returns the step's
    (T, N_TERMS) contribution to d loss / d theta and the factors that ``grad_update`` adds
    to the weight gradient. Which terms act where is fixed here, so ``forward`` and
    ``backward`` contain no data-dependent branches (``torch.compile`` fuses them whole).

    ``kernel0``: the first layer runs in kernel form. ``forward`` then takes its
    pre-activation ``z0`` (T, n_1) instead of reading ``Ws[0]``, ``backward`` takes
    ``v0`` = Wbar'_0 x_t (T, n_1) instead of reading ``Wbar[0]``, and ``backward`` returns
    the first layer's weight-gradient factor as the vector zbar_0 (T, n_1) (its right
    factor is the input x_t); ``update`` and ``grad_update`` leave ``Ws[0]``/``Wbar[0]`` alone.

    ``fb_terms`` (plastic feedback, docs/plastic-feedback.md): the feedback matrices Bs are
    part of the state too. ``forward`` then also takes ``ph`` (phi's columns) and appends to
    the tape, per matrix, the factors of its update (:func:`labkit.rules.feedback_factors`);
    ``backward`` also takes ``Bbar`` (dLoss/dB after the step) and ``ph``, and returns
    ``(theta part, factors, phi part (T, N_FEEDBACK_TERMS), B factors)``, the B factors being
    those of Bbar_t - (1 - phi_1) Bbar_{t+1}; ``update_b`` and ``grad_update_b`` do for the Bs
    what ``update`` and ``grad_update`` do for the Ws. Matrices below ``lo`` (B_1 when no term
    reads e_0) are never read, so their gradient is zero and their adjoint is skipped.
    """
    plans = [LayerPlan(tuple(ts)) for ts in layer_terms]
    pathway = pathways.get(kind)
    L = len(plans)
    fplan = FeedbackPlan(fb_terms) if fb_terms else None
    lo = 0 if plans[0].pre_err or (fplan is not None and fplan.pre_err) else 1

    def forward(Ws, Bs, x, onehot, th, z0=None, ph=None):
        ys = [x]
        zs = []
        for i in range(L):
            z = z0 if (kernel0 and i == 0) else rows_times_Wt(ys[i], Ws[i])
            zs.append(z)
            ys.append(softplus(z, beta) if i < L - 1 else torch.softmax(z, dim=-1))
        es: list = [None] * (L + 1)
        gs: list = [None] * L
        ds: list = [None] * L
        es[L] = ys[L] - onehot
        for j in range(L - 1, lo - 1, -1):
            g = pathway.signal(j, Ws, Bs, es, onehot, _mv, _mtv)
            d = -torch.expm1(ys[j] * -beta)
            gs[j], ds[j] = g, d
            es[j] = g * d
        saved = []
        for i in range(L):
            if kernel0 and i == 0:  # only alpha (and S) are needed: A[t] = alpha e_post
                saved.append(kernel_factors(plans[0], th, ys[1]))
            else:
                saved.append(layer_factors(plans[i], th, Ws[i], ys, es, zs, i))
        if fplan is not None:  # from the pre-update Bs and the same ys, es as the W update
            fsaved = [feedback_factors(fplan, ph, Bs[j], ys, es, j) for j in range(L)]
            return ys, zs, es, gs, ds, saved, onehot, fsaved
        return ys, zs, es, gs, ds, saved, onehot

    def update(Ws, keep, saved, sign: float) -> None:
        # Every layer read the pre-update weights in forward(); apply (sign=1) or undo
        # (sign=-1) the step's updates in place. Kept out of the compiled functions: a
        # compiled in-place update becomes an out-of-place one plus a copy (two extra passes).
        for i in range(L):
            Pm, Qm = saved[i][6], saved[i][7]
            if plans[i].decay and sign > 0:
                Ws[i].mul_(keep)
            if Pm is not None:
                _addlr(Ws[i], Pm, Qm, sign)
            if plans[i].decay and sign < 0:
                Ws[i].div_(keep)

    def update_b(Bs, keep_b, fsaved, sign: float, first: int = 0) -> None:
        """Apply (sign=1) or undo (sign=-1) the feedback matrices' updates in place, from
        matrix ``first`` on."""
        for j in range(first, L):
            Pm, Qm = fsaved[j][1], fsaved[j][2]
            if fplan.decay and sign > 0:
                Bs[j].mul_(keep_b)
            if Pm is not None:
                _addlr(Bs[j], Pm, Qm, sign)
            if fplan.decay and sign < 0:
                Bs[j].div_(keep_b)

    def backward(Ws, Wbar, Bs, th, tape, v0=None, Bbar=None, ph=None):
        """Ws: the step's starting weights (already undone); Wbar: gradient after the step.
        Returns the (T, N_TERMS) theta-gradient contribution and, per layer, the rank-<=3
        factors (left (T, n, k), right (T, k, m)) of Wbar_t - (1 - th3) Wbar_{t+1} (kernel0:
        the first layer's is zbar_0 alone, see above). With plastic feedback, see above."""
        ys, zs, es, gs, ds, saved, onehot = tape[:7]
        thbar: list = [None] * N_TERMS
        ys_bar: list = [None] * (L + 1)
        es_bar: list = [None] * (L + 1)
        zs_bar: list = [None] * L
        ubars: list = [None] * L
        # 2. adjoint of every layer's update (reads Wbar' = Wbar[i] and W_t)
        for i in range(L):
            if kernel0 and i == 0:
                kernel_adjoint(plans[0], th, v0, ys, es, saved[0], thbar, ys_bar, es_bar)
            else:
                layer_adjoint(plans[i], th, Ws[i], Wbar[i], ys, es, zs, i, saved[i],
                              thbar, ys_bar, es_bar, zs_bar, ubars)
        if fplan is not None:  # 2b. adjoint of every read feedback matrix's update (reads Bbar', B_t)
            phbar: list = [None] * N_FEEDBACK_TERMS
            vbars: list = [None] * L
            for j in range(lo, L):
                vbars[j] = feedback_adjoint(fplan, ph, Bs[j], Bbar[j], ys, es, j, tape[7][j],
                                            phbar, ys_bar, es_bar)
            gbars: list = [None] * L
        # 3. the error pass in reverse (upwards), through the pathway's own adjoint
        sig_factors: list = [None] * L
        for j in range(lo, L):
            eb = es_bar[j]
            if eb is None:
                continue
            gbar = eb * ds[j]
            if j >= 1:
                ys_bar[j] = _add(ys_bar[j], eb * gs[j] * (1.0 - ds[j]) * beta)
            sig_factors[j] = pathway.signal_adjoint(j, Ws, Bs, es, onehot, gbar, es_bar, _mv, _mtv)
            if fplan is not None:
                gbars[j] = gbar  # g_j = Bs[j] es[j+1]: Bbar[j] += gbar es[j+1]^T
        if es_bar[L] is not None:
            ys_bar[L] = _add(ys_bar[L], es_bar[L])
        # 4. the forward pass in reverse (downwards), and the weight gradient's new factors
        factors: list = [None] * L
        for i in range(L - 1, -1, -1):
            yb = ys_bar[i + 1]
            zb = zs_bar[i]
            if yb is not None:
                if i == L - 1:
                    y = ys[L]
                    zb = _add(zb, y * (yb - _dot(yb, y)))
                else:
                    zb = _add(zb, yb * ds[i + 1])
            if kernel0 and i == 0:
                factors[0] = zb  # times x_t^T: only updates, ubar and the signal's factor are absent here
                continue
            left, right = [], []
            if zb is not None:
                left.append(zb)
                right.append(ys[i])
                if i >= 1:
                    ys_bar[i] = _add(ys_bar[i], rows_times_W(zb, Ws[i]))
            if ubars[i] is not None:
                left.append(ys[i + 1])
                right.append(ubars[i])
            if sig_factors[i] is not None:
                left.append(sig_factors[i][0])
                right.append(sig_factors[i][1])
            if left:
                factors[i] = (torch.stack(left, dim=-1), torch.stack(right, dim=1))
        zero = torch.zeros_like(th[0])
        thgrad = torch.cat([zero if g is None else g for g in thbar], dim=-1)
        if fplan is None:
            return thgrad, factors
        bfactors: list = [None] * L
        for j in range(lo, L):
            left, right = [], []
            if gbars[j] is not None:
                left.append(gbars[j])
                right.append(es[j + 1])
            if vbars[j] is not None:
                left.append(vbars[j])
                right.append(ys[j + 1])
            if left:
                bfactors[j] = (torch.stack(left, dim=-1), torch.stack(right, dim=1))
        phgrad = torch.cat([zero if g is None else g for g in phbar], dim=-1)
        return thgrad, factors, phgrad, bfactors

    def grad_update(Wbar, keep, factors) -> None:
        """Wbar_t = (1 - th3) Wbar_{t+1} + left right, in place."""
        for i in range(1 if kernel0 else 0, L):
            if plans[i].decay:
                Wbar[i].mul_(keep)
            if factors[i] is not None:
                _addlr(Wbar[i], *factors[i])

    def grad_update_b(Bbar, keep_b, bfactors) -> None:
        """Bbar_t = (1 - phi_1) Bbar_{t+1} + left right, in place (matrices from ``lo`` on)."""
        for j in range(lo, L):
            if fplan.decay:
                Bbar[j].mul_(keep_b)
            if bfactors[j] is not None:
                _addlr(Bbar[j], *bfactors[j])

    if fplan is not None:
        return forward, update, backward, grad_update, update_b, grad_update_b, lo
    return forward, update, backward, grad_update


_COMPILED: dict = {}


def _steps(layer_terms, kind: str, beta: float, compile: bool, kernel0: bool = False, fb_terms: tuple = ()):
    if not compile:
        return _make_steps(layer_terms, kind, beta, kernel0, fb_terms)
    key = (layer_terms, kind, beta) + ((True,) if kernel0 else ()) + ((("fb",) + fb_terms,) if fb_terms else ())
    if key not in _COMPILED:
        fwd, upd, bwd, gupd, *rest = _make_steps(layer_terms, kind, beta, kernel0, fb_terms)
        _COMPILED[key] = (torch.compile(fwd, dynamic=False), upd, torch.compile(bwd, dynamic=False), gupd, *rest)
    return _COMPILED[key]


def _first_compiled_call(fn, args):
    """Call a compiled step; if torch.compile itself fails (no C++ compiler, an unsupported
    platform), say so and what to do instead of showing the compiler's traceback alone."""
    try:
        return fn(*args)
    except Exception as err:
        if type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise RuntimeError(
                f"torch.compile could not compile the inner loop ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Run without --compile "
                "(compile=False): the meta-gradient is the same, only slower."
            ) from err
        raise


def meta_gradient_adjoint(
    theta: torch.Tensor, ep: Episodic, compile: bool = False, phi: torch.Tensor | None = None,
) -> MetaGradient:
    """Exact d(query loss)/d(theta) per trial by the hand-derived reverse pass (module docstring).

    theta: (T, N_TERMS). Returns :class:`labkit.episode.MetaGradient` (loss, accuracy, grad (T, N_TERMS),
    adapted weights). Same value as ``meta_gradient(theta, ep, "reverse")``. ``compile=True``
    runs each step through ``torch.compile`` (1.3-2x faster for few trials on a CPU, after a
    compilation of 5-35 s per new shape; needs a C++ compiler).

    Kernel form of the first layer. When the first layer's terms are theta_0 and theta_5
    only (the learning-rate-only rules FA, BP, DFA), its update is
    e_t (-alpha_t x_t)^T, so W_t = W_0 - sum_{s<t} alpha_s e_s x_s^T and its pre-activation is
    z_t = W_0 x_t - sum_{s<t} (x_s . x_t) alpha_s e_s: the dense n_1 x n_0 matrix (784 x 170,
    three quarters of the network) is never updated step by step. The inputs' Gram matrix
    G = X X^T (N x N) and W_0 X^T are computed once per episode; the weight gradient
    likewise stays Wbar_K + sum_{s>t} zbar_s x_s^T, so the backward pass needs only
    Wbar_{t+1} x_t = Wbar_K x_t + sum_{s>t} (x_s . x_t) zbar_s. Same numbers up to rounding
    (tests/test_fast_paths.py).

    Plastic feedback (``ep.feedback_terms`` not empty): ``phi`` (T, N_FEEDBACK_TERMS) is
    required, the feedback matrices are updated in place and reconstructed backwards like the
    weights, and the result carries ``phi_grad`` and the adapted ``Bs`` (docs/plastic-feedback.md).
    """
    L = len(ep.Ws)
    if ep.rule.n_layers != L:
        raise ValueError(f"rule has {ep.rule.n_layers} layers but the network has {L}")
    pathways.get(ep.feedback)  # a clear error for an unknown pathway
    phi = resolve_phi(phi, ep, theta)
    if phi is not None:
        return _meta_gradient_adjoint_plastic(theta, phi, ep, compile)
    layer_terms = tuple(tuple(ts) for ts in ep.rule.layer_terms)
    N = ep.x_train.shape[1]
    n1, n0 = ep.Ws[0].shape[1:]
    kernel0 = _kernel_first_layer(layer_terms[0], N, n0, n1)
    fwd, upd, bwd, gupd = _steps(layer_terms, ep.feedback, float(ep.beta), compile, kernel0)
    theta = theta.detach()
    with torch.no_grad():
        Ws = [W.detach() if (kernel0 and i == 0) else W.detach().clone().contiguous() for i, W in enumerate(ep.Ws)]
        Bs = [B.detach() for B in ep.Bs]
        # per step: samples (N, T, n_0) and one-hot labels, theta's columns (T, 1), decay factor
        xs = ep.x_train.transpose(0, 1).contiguous()
        onehots = torch.nn.functional.one_hot(ep.y_train, Ws[-1].shape[1]).to(xs.dtype).transpose(0, 1).contiguous()
        th = [theta[:, r : r + 1] for r in range(N_TERMS)]
        keep = (1.0 - th[3]).unsqueeze(-1)
        if kernel0:
            X = ep.x_train.detach()  # (T, N, n_0)
            gram = torch.bmm(X, X.transpose(1, 2))  # (T, N, N), symmetric
            Z0 = torch.bmm(X, Ws[0].transpose(1, 2)).transpose(0, 1).contiguous()  # (N, T, n_1): W_0 x_t
            A = X.new_zeros(X.shape[0], N, n1)  # row s: alpha_s e_s
        tape = []
        for t in range(N):
            z0 = Z0[t] - torch.bmm(gram[:, t : t + 1, :t], A[:, :t]).squeeze(1) if kernel0 else None
            args = (Ws, Bs, xs[t], onehots[t], th, z0)
            if compile and t == 0:
                tape.append(_first_compiled_call(fwd, args))
            else:
                tape.append(fwd(*args))
            _, _, es, _, _, saved, _ = tape[-1]
            if kernel0:
                A[:, t] = saved[0][4] * es[1]  # alpha_t e_t (saved[0][4] is the first layer's alpha)
            upd(Ws, keep, saved, 1.0)
        if kernel0:
            Ws[0] = Ws[0] - torch.bmm(A.transpose(1, 2), X)  # W_K = W_0 - sum_s alpha_s e_s x_s^T
        Wf = [W.clone().requires_grad_(True) for W in Ws]
        with torch.enable_grad():
            loss, acc = query_loss_and_accuracy(Wf, ep.x_query, ep.y_query, ep.beta)
            Wbar = [g.contiguous() for g in torch.autograd.grad(loss.sum(), Wf)]
        if kernel0:
            V = torch.bmm(X, Wbar[0].transpose(1, 2)).transpose(0, 1).contiguous()  # (N, T, n_1): Wbar_K x_t
            Zb = torch.zeros_like(A)  # row s: zbar_s
            Wbar[0] = None
        grad = torch.zeros_like(theta)
        for t in range(N - 1, -1, -1):
            step = tape.pop()
            upd(Ws, keep, step[5], -1.0)  # W_t = (W_{t+1} - P Q) / (1 - th3)
            v0 = V[t] + torch.bmm(gram[:, t : t + 1, t + 1 :], Zb[:, t + 1 :]).squeeze(1) if kernel0 else None
            g, factors = bwd(Ws, Wbar, Bs, th, step, v0)
            if kernel0:
                if factors[0] is not None:
                    Zb[:, t] = factors[0]
                factors[0] = None
            gupd(Wbar, keep, factors)
            grad += g  # inactive terms get exact zeros from bwd
    return MetaGradient(loss.detach(), acc.detach(), grad, [W.detach() for W in Wf])


def _meta_gradient_adjoint_plastic(theta: torch.Tensor, phi: torch.Tensor, ep: Episodic, compile: bool) -> MetaGradient:
    """:func:`meta_gradient_adjoint` with plastic feedback matrices (phi checked). The same
    engine with the Bs as part of the state: per step, forward (tape), update W and B in place;
    backwards, undo both (B_t = (B_{t+1} - P Q) / (1 - phi_1)), the step's adjoint, then
    Wbar_t and Bbar_t. dLoss/dB after the last step is zero (the query reads only W)."""
    L = len(ep.Ws)
    layer_terms = tuple(tuple(ts) for ts in ep.rule.layer_terms)
    fb_terms = tuple(ep.feedback_terms)
    N = ep.x_train.shape[1]
    n1, n0 = ep.Ws[0].shape[1:]
    kernel0 = _kernel_first_layer(layer_terms[0], N, n0, n1)
    fwd, upd, bwd, gupd, upd_b, gupd_b, lo = _steps(layer_terms, ep.feedback, float(ep.beta), compile, kernel0,
                                                   fb_terms)
    with torch.no_grad():
        Ws = [W.detach() if (kernel0 and i == 0) else W.detach().clone().contiguous() for i, W in enumerate(ep.Ws)]
        Bs = [B.detach().clone().contiguous() for B in ep.Bs]
        xs = ep.x_train.transpose(0, 1).contiguous()
        onehots = torch.nn.functional.one_hot(ep.y_train, Ws[-1].shape[1]).to(xs.dtype).transpose(0, 1).contiguous()
        th = [theta[:, r : r + 1] for r in range(N_TERMS)]
        ph = [phi[:, s : s + 1] for s in range(N_FEEDBACK_TERMS)]
        keep = (1.0 - th[3]).unsqueeze(-1)
        keep_b = (1.0 - ph[B_DECAY]).unsqueeze(-1)
        if kernel0:
            X = ep.x_train.detach()
            gram = torch.bmm(X, X.transpose(1, 2))
            Z0 = torch.bmm(X, Ws[0].transpose(1, 2)).transpose(0, 1).contiguous()
            A = X.new_zeros(X.shape[0], N, n1)
        tape = []
        for t in range(N):
            z0 = Z0[t] - torch.bmm(gram[:, t : t + 1, :t], A[:, :t]).squeeze(1) if kernel0 else None
            args = (Ws, Bs, xs[t], onehots[t], th, z0, ph)
            if compile and t == 0:
                tape.append(_first_compiled_call(fwd, args))
            else:
                tape.append(fwd(*args))
            es, saved, fsaved = tape[-1][2], tape[-1][5], tape[-1][7]
            if kernel0:
                A[:, t] = saved[0][4] * es[1]
            upd(Ws, keep, saved, 1.0)
            upd_b(Bs, keep_b, fsaved, 1.0)
        if kernel0:
            Ws[0] = Ws[0] - torch.bmm(A.transpose(1, 2), X)
        Bs_final = [B.clone() for B in Bs]
        Wf = [W.clone().requires_grad_(True) for W in Ws]
        with torch.enable_grad():
            loss, acc = query_loss_and_accuracy(Wf, ep.x_query, ep.y_query, ep.beta)
            Wbar = [g.contiguous() for g in torch.autograd.grad(loss.sum(), Wf)]
        if kernel0:
            V = torch.bmm(X, Wbar[0].transpose(1, 2)).transpose(0, 1).contiguous()
            Zb = torch.zeros_like(A)
            Wbar[0] = None
        Bbar = [torch.zeros_like(B) for B in Bs]
        grad = torch.zeros_like(theta)
        phi_grad = torch.zeros_like(phi)
        for t in range(N - 1, -1, -1):
            step = tape.pop()
            upd(Ws, keep, step[5], -1.0)
            upd_b(Bs, keep_b, step[7], -1.0, lo)  # matrices below lo are never read again
            v0 = V[t] + torch.bmm(gram[:, t : t + 1, t + 1 :], Zb[:, t + 1 :]).squeeze(1) if kernel0 else None
            g, factors, gphi, bfactors = bwd(Ws, Wbar, Bs, th, step, v0, Bbar, ph)
            if kernel0:
                if factors[0] is not None:
                    Zb[:, t] = factors[0]
                factors[0] = None
            gupd(Wbar, keep, factors)
            gupd_b(Bbar, keep_b, bfactors)
            grad += g
            phi_grad += gphi
    return MetaGradient(loss.detach(), acc.detach(), grad, [W.detach() for W in Wf], phi_grad, Bs_final)
