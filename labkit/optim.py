"""How theta moves: Adam over (trials, terms), the L1 penalty, and each term's step size.

One meta-step of trial i changes its coefficients theta_i (one per plasticity term) by Adam's
step on the meta-gradient, with a learning rate multiplied per coordinate by

* the warm-up factor min(1, episode / warmup) (:func:`warmup_factor`): Adam's first steps
  are sign-sized whatever the quality of the gradient (its second-moment estimate rests on
  a handful of samples), so without warm-up every coefficient of the ten-term pool moves
  by ~lr at once before the meta-gradient has any consensus;
* the term's scale c_r = min(1, ||F^0|| / ||F^r||) (:func:`term_scales`): Adam moves every
  coordinate by about the learning rate, but the terms are not in the same units (on
  digits, at the start, ||F^5|| is ~9x ||F^0||, the decay term F^3 ~7x, Oja's F^9 ~3x), so
  without it the large terms change W far more per meta-step than the pseudo-gradient;
* the trial's own factor, halved at each rollback (:mod:`labkit.guards`).

The L1 penalty lambda * ||theta||_1 acts in one of two ways: ``coupled`` (the paper's loss:
lambda * sign(theta) joins the meta-gradient, :func:`l1_subgradient`) or ``proximal``
(soft-thresholding after Adam's step, :func:`l1_proximal`). docs/architecture.md tells the
story of the meta-training loop.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import EpisodeSampler
from .feedback import backward, init_feedback
from .networks import forward, init_weights
from .rules import fused_update, pool_term
from .terms import N_TERMS

__all__ = ["MaskedAdam", "l1_subgradient", "l1_proximal", "warmup_factor", "term_scales"]


class MaskedAdam:
    """Adam over a (T, R) tensor, element by element, with a per-trial "take this step" mask.

    Identical to ``torch.optim.Adam`` (no weight decay, no amsgrad) for the trials that
    step; a masked trial's parameters, moments and step count stay untouched. The state is
    ``m``, ``v`` (T, R) and ``t`` (T,) (each trial's own step count).
    """

    def __init__(self, shape: tuple[int, int], lr: float, betas=(0.9, 0.999), eps: float = 1e-8, dtype=torch.float32):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.t = torch.zeros(shape[0], dtype=torch.long)

    def step(self, param: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor,
             lr_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """One step for the trials where ``mask`` is True; ``lr_scale`` is a number, an
        (R,) per-coordinate or a (T, R) per-trial-and-coordinate multiplier of the learning rate."""
        b1, b2 = self.betas
        m_new = b1 * self.m + (1 - b1) * grad
        v_new = b2 * self.v + (1 - b2) * grad * grad
        t_new = self.t + 1
        bc1 = 1 - b1 ** t_new.to(param.dtype)
        bc2 = 1 - b2 ** t_new.to(param.dtype)
        step = (self.lr / bc1)[:, None] * lr_scale * m_new / ((v_new / bc2[:, None]).sqrt() + self.eps)
        keep = mask[:, None]
        self.m = torch.where(keep, m_new, self.m)
        self.v = torch.where(keep, v_new, self.v)
        self.t = torch.where(mask, t_new, self.t)
        return torch.where(keep, param - step, param)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, d: dict) -> None:
        self.m, self.v, self.t = d["m"], d["v"], d["t"]


def l1_subgradient(theta: torch.Tensor, lam: float, mode: str) -> torch.Tensor | float:
    """What the L1 penalty adds to the meta-gradient: ``lam * sign(theta)`` (zero where
    theta_r = 0) when ``mode`` is ``"coupled"``, else 0 (``"proximal"`` acts after the step)."""
    return lam * torch.sign(theta) if mode == "coupled" else 0.0


def l1_proximal(theta: torch.Tensor, step_size: torch.Tensor, lam: float, mask: torch.Tensor) -> torch.Tensor:
    """Decoupled (proximal) L1: after Adam's step, move each coefficient towards 0 by
    ``lam`` x its own step size ``step_size`` (the learning rate times every multiplier, (T, R)),
    stopping at 0 (soft thresholding), where ``mask`` (T, R) is True; elsewhere theta is kept.

    Adam divides the meta-gradient by its running scale, and near good rules that scale is
    1e1-1e5 (steep, chaotic inner loops), so a penalty added to the gradient (coupled) is
    lost in it; here lam is in units of Adam's normalised step: a term survives only if its
    meta-gradient pushes it away from 0 more consistently than lam.
    """
    shrink = step_size * lam
    moved = torch.sign(theta) * torch.clamp(theta.abs() - shrink, min=0.0)
    return torch.where(mask, moved, theta)


def warmup_factor(episode: int, warmup: int) -> float:
    """The meta learning rate's linear warm-up: min(1, episode / warmup), 1 when ``warmup`` is 0."""
    return min(1.0, episode / warmup) if warmup else 1.0


@torch.no_grad()
def term_scales(
    sampler: EpisodeSampler, sizes: Sequence[int], feedback: str, theta0: float, seed: int, every: int = 10
) -> torch.Tensor:
    """Per-term meta-step multipliers c_r = min(1, ||F^0|| / ||F^r||), shape (N_TERMS,).

    Measured on one probe episode (its own generator, derived from ``seed``, so no trial's
    random stream is touched): a fresh network learns online with the pseudo-gradient at
    learning rate ``theta0``; every ``every`` samples and in every layer the ratio of each
    term's Frobenius norm to F^0's is recorded; c_r uses the geometric mean of the ratios.
    With them no term moves W faster per meta-step than the pseudo-gradient.
    """
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 2**31 - 1]).generate_state(1)[0]))
    ep = sampler.sample(g)
    Ws = init_weights(sizes, [g])
    Bs = init_feedback(feedback, sizes, [g])
    theta = torch.zeros(1, N_TERMS)
    theta[0, 0] = theta0
    onehot = torch.nn.functional.one_hot(ep.y_train, sizes[-1]).float()
    log_ratio = torch.zeros(N_TERMS, dtype=torch.float64)
    count = 0
    for t in range(ep.x_train.shape[0]):
        zs, ys = forward(Ws, ep.x_train[t : t + 1])
        es = backward(feedback, Ws, Bs, ys, ys[-1] - onehot[t : t + 1])
        if t % every == 0:
            for l in range(len(Ws)):
                terms = [pool_term(r, Ws[l], ys[l], ys[l + 1], es[l], es[l + 1]).norm() for r in range(N_TERMS)]
                norms = torch.stack(terms).double().clamp_min(1e-30)
                log_ratio += (norms / norms[0]).log()
                count += 1
        Ws = [fused_update(theta, (0,), Ws[l], ys[l], ys[l + 1], es[l], es[l + 1], zs[l]) for l in range(len(Ws))]
    ratio = (log_ratio / count).exp()
    return (1.0 / ratio).clamp(max=1.0).float()
