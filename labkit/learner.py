"""One episode of online learning (the inner loop), batched over trials, and its meta-gradient.

The inner loop is plain tensor algebra: forward mat-vecs, the feedback pass and one fused
low-rank update per layer (:func:`labkit.rules.fused_update`). Autograd is used only to
differentiate the whole unrolled loop with respect to theta (the exact meta-gradient).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import ops
from .adjoint import meta_gradient_adjoint
from .episode import Episodic, MetaGradient, resolve_phi
from .feedback import backward, check_plastic_feedback
from .feedback_terms import FEEDBACK_USES_PRE_ERROR, N_FEEDBACK_TERMS
from .metrics import alignment_angles, hidden_effective_ranks, query_loss_and_accuracy, weight_norms
from .networks import BETA, softplus
from .rules import USES_PRE_ERROR, Rule, fused_feedback_update, fused_update

__all__ = ["Episodic", "MetaGradient", "GRAD_MODES", "online_train", "online_train_plastic", "episode_loss",
           "meta_gradient", "learning_curve"]


def online_train(
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    feedback: str,
    rule: Rule,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    beta: float = BETA,
    callback: Callable[[int, list[torch.Tensor]], None] | None = None,
    every: int = 1,
) -> list[torch.Tensor]:
    """Train online, one sample at a time, applying the rule after every sample.

    Ws: L tensors (T, n_l, n_{l-1}); theta: (T, 10); x: (T, N, n_0); y: (T, N) with
    n_L classes. Returns the adapted weights (a new list; the inputs are not modified).
    All layers are updated from the same forward/backward pass of the current sample.
    ``callback(step, Ws)`` is called before the first sample and after every ``every``
    samples (for online learning curves; it should run under ``torch.no_grad``).
    The feedback matrices ``Bs`` stay fixed; :func:`online_train_plastic` makes them plastic.
    """
    cb = None if callback is None else (lambda step, Ws_now, Bs_now: callback(step, Ws_now))
    return _online(Ws, Bs, feedback, rule, theta, None, (), x, y, beta, cb, every)[0]


def online_train_plastic(
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    feedback: str,
    rule: Rule,
    theta: torch.Tensor,
    phi: torch.Tensor,
    feedback_terms: Sequence[int] | str,
    x: torch.Tensor,
    y: torch.Tensor,
    beta: float = BETA,
    callback: Callable[[int, list[torch.Tensor], list[torch.Tensor]], None] | None = None,
    every: int = 1,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`online_train` with plastic feedback matrices: after every sample, besides
    W_l <- W_l + sum_r theta_r F^r, every B_l <- B_l + sum_s phi_s G^s
    (:mod:`labkit.feedback_terms`), both from the same activities and errors (those of the
    pre-update W and B).

    phi: (T, N_FEEDBACK_TERMS); feedback_terms: the active G^s (a name such as ``"kp"`` or
    indices); Bs: the pathway's matrices, ``Bs[l-1]`` = B_l (T, n_{l-1}, n_l) (feedback ``"fa"``).
    Returns ``(Ws, Bs)`` adapted (new lists; the inputs are not modified). ``callback(step, Ws,
    Bs)`` as in :func:`online_train`. With ``feedback_terms`` empty the Bs stay fixed and the
    weights are those of :func:`online_train` bit for bit.
    """
    fb = check_plastic_feedback(feedback, feedback_terms)
    if fb and (phi is None or tuple(phi.shape) != (theta.shape[0], N_FEEDBACK_TERMS)):
        raise ValueError(f"phi must be a ({theta.shape[0]}, {N_FEEDBACK_TERMS}) tensor, got "
                         f"{None if phi is None else tuple(phi.shape)}")
    return _online(Ws, Bs, feedback, rule, theta, phi if fb else None, fb, x, y, beta, callback, every)


def _online(Ws, Bs, feedback, rule, theta, phi, fb, x, y, beta, callback, every):
    """The inner loop of :func:`online_train` and :func:`online_train_plastic`: returns (Ws, Bs)."""
    Ws = list(Ws)
    Bs = list(Bs)
    L = len(Ws)
    n_out = Ws[-1].shape[1]
    layer_terms = rule.layer_terms
    if len(layer_terms) != L:
        raise ValueError(f"rule has {len(layer_terms)} layers but the network has {L}")
    need_pre = [bool(USES_PRE_ERROR & set(ts)) for ts in layer_terms]
    # B_1's eHebb term reads the synthetic input error e_0 (read through the pre-update B_1)
    need_e0 = need_pre[0] or bool(FEEDBACK_USES_PRE_ERROR & set(fb))
    onehot = torch.nn.functional.one_hot(y, n_out).to(x.dtype)  # (T, N, n_L)
    N = x.shape[1]
    if callback is not None:
        callback(0, Ws, Bs)
    for t in range(N):
        # forward, one sample per trial: z_l = W_l y_{l-1}
        ys = [x[:, t]]
        zs = []
        for l in range(L):
            z = ops.matvec(Ws[l], ys[-1])
            zs.append(z)
            ys.append(softplus(z, beta) if l < L - 1 else torch.softmax(z, dim=-1))
        e_L = ys[-1] - onehot[:, t]
        es = backward(feedback, Ws, Bs, ys, e_L, beta, need_e0=need_e0, target=onehot[:, t])
        if fb:  # from the same ys, es (and the pre-update B) as the W update
            Bs = [fused_feedback_update(phi, fb, Bs[j], ys[j], ys[j + 1], es[j], es[j + 1]) for j in range(L)]
        Ws = [
            fused_update(theta, layer_terms[l], Ws[l], ys[l], ys[l + 1], es[l], es[l + 1], zs[l])
            for l in range(L)
        ]
        if callback is not None and ((t + 1) % every == 0 or t + 1 == N):
            callback(t + 1, Ws, Bs)
    return Ws, Bs


def episode_loss(
    theta: torch.Tensor, ep: Episodic, phi: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Query (loss, accuracy), each (T,), after online training on the episode, and the adapted Ws.

    ``phi`` (T, N_FEEDBACK_TERMS): the feedback terms' coefficients, required exactly when
    ``ep.feedback_terms`` is not empty (plastic feedback; :func:`online_train_plastic`)."""
    if phi is None and not ep.feedback_terms:
        Ws = online_train(ep.Ws, ep.Bs, ep.feedback, ep.rule, theta, ep.x_train, ep.y_train, ep.beta)
    else:
        if phi is None or not ep.feedback_terms:
            resolve_phi(phi, ep, theta)  # raises the clear error
        Ws, _ = online_train_plastic(ep.Ws, ep.Bs, ep.feedback, ep.rule, theta, phi, ep.feedback_terms,
                                     ep.x_train, ep.y_train, ep.beta)
    loss, acc = query_loss_and_accuracy(Ws, ep.x_query, ep.y_query, ep.beta)
    return loss, acc, Ws


GRAD_MODES: tuple[str, ...] = ("adjoint", "reverse", "forward")


def meta_gradient(
    theta: torch.Tensor, ep: Episodic, mode: str = "adjoint", compile: bool = False, phi: torch.Tensor | None = None,
) -> MetaGradient:
    """Exact gradient of each trial's query loss with respect to its own theta.

    Trial i's loss depends only on theta[i], so the gradient of the summed loss is the
    per-trial gradient.

    ``mode="adjoint"`` (default): the hand-derived reverse pass of :mod:`labkit.adjoint`
    (weights updated in place and reconstructed backwards; only vectors are stored per step).
    ``mode="reverse"``: autograd through the unrolled loop (the reference; stores W at every
    step: memory grows with the episode length). ``compile=True`` (adjoint only) runs the
    adjoint's steps through ``torch.compile``. ``mode="forward"``: forward-mode (torch.func.jvp), one
    tangent per active term, vectorised with vmap; memory stays flat as the episode grows,
    cost grows with the number of active terms.

    Plastic feedback (``ep.feedback_terms`` not empty, docs/plastic-feedback.md): ``phi``
    (T, N_FEEDBACK_TERMS) holds the feedback terms' coefficients, and the result also carries
    ``phi_grad`` (T, N_FEEDBACK_TERMS), d loss_i / d phi_i, and the adapted ``Bs``, in every mode.
    Without plastic feedback ``phi`` must be None, and nothing changes.
    """
    theta = theta.detach()
    if compile and mode != "adjoint":
        raise ValueError("compile=True works with mode='adjoint' only")
    if mode not in GRAD_MODES:
        raise ValueError(f"unknown meta-gradient mode {mode!r}; choose 'adjoint', 'reverse' or 'forward'")
    phi = resolve_phi(phi, ep, theta)
    if phi is not None:
        return _meta_gradient_plastic(theta, phi, ep, mode, compile)
    if mode == "adjoint":
        return meta_gradient_adjoint(theta, ep, compile=compile)
    if mode == "reverse":
        th = theta.clone().requires_grad_(True)
        with torch.enable_grad(), ops.deferred_weight_grads():
            loss, acc, Ws = episode_loss(th, ep)
            (grad,) = torch.autograd.grad(loss.sum(), th)
        return MetaGradient(loss.detach(), acc.detach(), grad, [W.detach() for W in Ws])
    if mode == "forward":
        from torch.func import jvp, vmap

        terms = list(ep.rule.terms)
        tangents = torch.zeros(len(terms), *theta.shape, dtype=theta.dtype, device=theta.device)
        for i, r in enumerate(terms):
            tangents[i, :, r] = 1.0

        def loss_fn(th: torch.Tensor):
            loss, acc, Ws = episode_loss(th, ep)
            return loss, (acc, Ws)

        def directional(v: torch.Tensor):
            loss, dloss, (acc, Ws) = jvp(loss_fn, (theta,), (v,), has_aux=True)
            return loss, acc, Ws, dloss

        with ops.reference_ops():
            loss, acc, Ws, dloss = vmap(directional, out_dims=(None, None, None, 0))(tangents)
        grad = torch.zeros_like(theta)
        for i, r in enumerate(terms):
            grad[:, r] = dloss[i]
        return MetaGradient(loss.detach(), acc.detach(), grad, [W.detach() for W in Ws])
    raise ValueError(f"unknown meta-gradient mode {mode!r}; choose 'adjoint', 'reverse' or 'forward'")


def _meta_gradient_plastic(theta: torch.Tensor, phi: torch.Tensor, ep: Episodic, mode: str, compile: bool) -> MetaGradient:
    """:func:`meta_gradient` with plastic feedback (phi already checked)."""
    if mode == "adjoint":
        return meta_gradient_adjoint(theta, ep, compile=compile, phi=phi)

    def run(th: torch.Tensor, ph: torch.Tensor):
        Ws, Bs = online_train_plastic(ep.Ws, ep.Bs, ep.feedback, ep.rule, th, ph, ep.feedback_terms,
                                      ep.x_train, ep.y_train, ep.beta)
        loss, acc = query_loss_and_accuracy(Ws, ep.x_query, ep.y_query, ep.beta)
        return loss, acc, Ws, Bs

    if mode == "reverse":
        th = theta.clone().requires_grad_(True)
        ph = phi.clone().requires_grad_(True)
        with torch.enable_grad(), ops.deferred_weight_grads():
            loss, acc, Ws, Bs = run(th, ph)
            grad, phi_grad = torch.autograd.grad(loss.sum(), (th, ph))
        return MetaGradient(loss.detach(), acc.detach(), grad, [W.detach() for W in Ws], phi_grad,
                            [B.detach() for B in Bs])
    # forward mode: one tangent per active theta term and per active phi term
    from torch.func import jvp, vmap

    terms, fterms = list(ep.rule.terms), list(ep.feedback_terms)
    n = len(terms) + len(fterms)
    t_th = torch.zeros(n, *theta.shape, dtype=theta.dtype, device=theta.device)
    t_ph = torch.zeros(n, *phi.shape, dtype=phi.dtype, device=phi.device)
    for i, r in enumerate(terms):
        t_th[i, :, r] = 1.0
    for i, s in enumerate(fterms):
        t_ph[len(terms) + i, :, s] = 1.0

    def loss_fn(th: torch.Tensor, ph: torch.Tensor):
        loss, acc, Ws, Bs = run(th, ph)
        return loss, (acc, Ws, Bs)

    def directional(v: torch.Tensor, w: torch.Tensor):
        loss, dloss, (acc, Ws, Bs) = jvp(loss_fn, (theta, phi), (v, w), has_aux=True)
        return loss, acc, Ws, Bs, dloss

    with ops.reference_ops():
        loss, acc, Ws, Bs, dloss = vmap(directional, out_dims=(None, None, None, None, 0))(t_th, t_ph)
    grad = torch.zeros_like(theta)
    phi_grad = torch.zeros_like(phi)
    for i, r in enumerate(terms):
        grad[:, r] = dloss[i]
    for i, s in enumerate(fterms):
        phi_grad[:, s] = dloss[len(terms) + i]
    return MetaGradient(loss.detach(), acc.detach(), grad, [W.detach() for W in Ws], phi_grad,
                        [B.detach() for B in Bs])


@torch.no_grad()
def learning_curve(
    Ws: Sequence[torch.Tensor],
    Bs: Sequence[torch.Tensor],
    feedback: str,
    rule: Rule,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
    every: int = 50,
    beta: float = BETA,
    steps: Sequence[int] | None = None,
    probe: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Online learning curve (the paper's Fig 1): train on the stream ``x: (T, N, n_0)``, ``y: (T, N)``
    one sample at a time, and every ``every`` samples measure on ``x_eval: (T, E, n_0)``.

    Returns ``{"steps": (S,), "accuracy": (T, S), "loss": (T, S), "alpha": (T, S, L-1)}`` where
    alpha are the teaching-signal angles to backprop (:func:`labkit.metrics.alignment_angles`).

    Options (both off by default; then the curve and its cost are as without them):

    * ``steps``: measure after exactly these numbers of samples (0 = before the first, up to
      N), instead of at 0, every ``every`` and N; e.g. ``[0, 1, 10, 100, 1000]``.
    * ``probe``: a fixed batch ``(T, P, n_0)`` (or ``(P, n_0)``, shared by all trials); the
      result then also holds ``"weight_norm": (T, S, L)``, ||W_l||_F for l = 1..L (the hidden
      layers' are ``[..., :L-1]``; :func:`labkit.metrics.weight_norms`), and
      ``"effective_rank": (T, S, L-1)``, the effective rank of each hidden layer's
      activations on the probe batch (:func:`labkit.metrics.hidden_effective_ranks`).
    """
    N = x.shape[1]
    wanted: set[int] | None = None
    if steps is not None:
        wanted = {int(s) for s in steps}
        if not wanted or min(wanted) < 0 or max(wanted) > N:
            raise ValueError(f"steps must be sample counts in 0..{N} (the stream's length), got {sorted(wanted)}")
    if probe is not None:
        if probe.dim() == 2:
            probe = probe.expand(x.shape[0], -1, -1)
        if probe.dim() != 3 or probe.shape[0] != x.shape[0] or probe.shape[2] != x.shape[2]:
            raise ValueError(f"probe must be (T, P, n_0) = ({x.shape[0]}, P, {x.shape[2]}) or (P, n_0), "
                             f"got {tuple(probe.shape)}")
        probe = probe.to(x.dtype)
    steps_done, accs, losses, alphas, norms, ranks = [], [], [], [], [], []

    def record(step: int, W_now: list[torch.Tensor]) -> None:
        if wanted is not None and step not in wanted:
            return
        loss, acc = query_loss_and_accuracy(W_now, x_eval, y_eval, beta)
        steps_done.append(step)
        accs.append(acc)
        losses.append(loss)
        alphas.append(alignment_angles(W_now, Bs, feedback, x_eval, y_eval, beta))
        if probe is not None:
            norms.append(weight_norms(W_now))
            ranks.append(hidden_effective_ranks(W_now, probe, beta))

    online_train(Ws, Bs, feedback, rule, theta, x, y, beta, callback=record, every=every if wanted is None else 1)
    out = {
        "steps": torch.tensor(steps_done),
        "accuracy": torch.stack(accs, dim=1),
        "loss": torch.stack(losses, dim=1),
        "alpha": torch.stack(alphas, dim=1),
    }
    if probe is not None:
        out["weight_norm"] = torch.stack(norms, dim=1)
        out["effective_rank"] = torch.stack(ranks, dim=1)
    return out
