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
from .episode import Episodic, MetaGradient
from .feedback import backward
from .metrics import alignment_angles, query_loss_and_accuracy
from .networks import BETA, softplus
from .rules import USES_PRE_ERROR, Rule, fused_update

__all__ = ["Episodic", "MetaGradient", "GRAD_MODES", "online_train", "episode_loss", "meta_gradient", "learning_curve"]


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
    """
    Ws = list(Ws)
    L = len(Ws)
    n_out = Ws[-1].shape[1]
    layer_terms = rule.layer_terms
    if len(layer_terms) != L:
        raise ValueError(f"rule has {len(layer_terms)} layers but the network has {L}")
    need_pre = [bool(USES_PRE_ERROR & set(ts)) for ts in layer_terms]
    onehot = torch.nn.functional.one_hot(y, n_out).to(x.dtype)  # (T, N, n_L)
    N = x.shape[1]
    if callback is not None:
        callback(0, Ws)
    for t in range(N):
        # forward, one sample per trial: z_l = W_l y_{l-1}
        ys = [x[:, t]]
        zs = []
        for l in range(L):
            z = ops.matvec(Ws[l], ys[-1])
            zs.append(z)
            ys.append(softplus(z, beta) if l < L - 1 else torch.softmax(z, dim=-1))
        e_L = ys[-1] - onehot[:, t]
        es = backward(feedback, Ws, Bs, ys, e_L, beta, need_e0=need_pre[0], target=onehot[:, t])
        Ws = [
            fused_update(theta, layer_terms[l], Ws[l], ys[l], ys[l + 1], es[l], es[l + 1], zs[l])
            for l in range(L)
        ]
        if callback is not None and ((t + 1) % every == 0 or t + 1 == N):
            callback(t + 1, Ws)
    return Ws


def episode_loss(theta: torch.Tensor, ep: Episodic) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Query (loss, accuracy), each (T,), after online training on the episode, and the adapted Ws."""
    Ws = online_train(ep.Ws, ep.Bs, ep.feedback, ep.rule, theta, ep.x_train, ep.y_train, ep.beta)
    loss, acc = query_loss_and_accuracy(Ws, ep.x_query, ep.y_query, ep.beta)
    return loss, acc, Ws


GRAD_MODES: tuple[str, ...] = ("adjoint", "reverse", "forward")


def meta_gradient(theta: torch.Tensor, ep: Episodic, mode: str = "adjoint", compile: bool = False) -> MetaGradient:
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
    """
    theta = theta.detach()
    if compile and mode != "adjoint":
        raise ValueError("compile=True works with mode='adjoint' only")
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
) -> dict[str, torch.Tensor]:
    """Online learning curve (the paper's Fig 1): train on the stream ``x: (T, N, n_0)``, ``y: (T, N)``
    one sample at a time, and every ``every`` samples measure on ``x_eval: (T, E, n_0)``.

    Returns ``{"steps": (S,), "accuracy": (T, S), "loss": (T, S), "alpha": (T, S, L-1)}`` where
    alpha are the teaching-signal angles to backprop (:func:`labkit.metrics.alignment_angles`).
    """
    steps, accs, losses, alphas = [], [], [], []

    def record(step: int, W_now: list[torch.Tensor]) -> None:
        loss, acc = query_loss_and_accuracy(W_now, x_eval, y_eval, beta)
        steps.append(step)
        accs.append(acc)
        losses.append(loss)
        alphas.append(alignment_angles(W_now, Bs, feedback, x_eval, y_eval, beta))

    online_train(Ws, Bs, feedback, rule, theta, x, y, beta, callback=record, every=every)
    return {
        "steps": torch.tensor(steps),
        "accuracy": torch.stack(accs, dim=1),
        "loss": torch.stack(losses, dim=1),
        "alpha": torch.stack(alphas, dim=1),
    }
