"""Fully connected networks without biases, batched over independent trials.

Conventions (docs/architecture.md, "Network and signals"):

* ``sizes = (n_0, n_1, ..., n_L)``; weight layer ``l`` (1-based in the paper, index
  ``l - 1`` in Python lists) maps layer ``l-1`` to layer ``l``.
* Every tensor carries a leading trial axis ``T``: ``W_l`` is ``(T, n_l, n_{l-1})`` and an
  activity vector is ``(T, n_l)``; a batch of samples is ``(T, N, n_l)``.
* Hidden units use softplus with ``beta = 10``; the output is a softmax over all classes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

PAPER_SIZES: tuple[int, ...] = (784, 170, 130, 100, 70, 47)
TABLE1_SIZES: tuple[int, ...] = (784, 130, 70, 47)
BETA: float = 10.0


def softplus(z: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """sigma(z) = log(1 + exp(beta z)) / beta, computed stably.

    Linear only above beta z = 40, where it equals z (and its slope 1) to float64 precision;
    torch's default cut at 20 is off by ~1e-9 in the slope, so the derivative the feedback
    reads from the output, 1 - exp(-beta y), would not be the slope of this function.
    """
    return torch.nn.functional.softplus(z, beta=beta, threshold=40.0)


def softplus_deriv_from_output(y: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """sigma'(z) read from the output y = sigma(z): 1 - exp(-beta y)."""
    return -torch.expm1(-beta * y)


def xavier_bound(fan_out: int, fan_in: int) -> float:
    """Half-width a of Xavier-uniform U(-a, a): a = sqrt(6 / (fan_in + fan_out))."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def xavier_uniform(
    shape: tuple[int, int], generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One (rows, cols) matrix drawn Xavier-uniform from ``generator``."""
    a = xavier_bound(shape[0], shape[1])
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * a


def check_init_scale(scale: float) -> float:
    """``scale`` as a float if it is a finite number > 0, else a ValueError saying so."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"init_scale (multiple of the Xavier scale) must be a number > 0, got {scale!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"init_scale (multiple of the Xavier scale) must be a finite number > 0, got {scale!r}")
    return s


def init_weights(
    sizes: Sequence[int],
    generators: Sequence[torch.Generator],
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
) -> list[torch.Tensor]:
    """Fresh forward weights for every trial: a list of L tensors ``(T, n_l, n_{l-1})``.

    Trial ``i`` draws only from ``generators[i]``, so its weights do not depend on how many
    trials run beside it. ``scale`` (> 0) multiplies the Xavier draw: W_l ~ U(-s a_l, s a_l),
    a_l = sqrt(6 / (n_{l-1} + n_l)), from the same random numbers whatever s is (a "bad
    initialisation" is s far from 1). Any depth works: ``sizes = (784, *(100,) * 12, 10)`` is
    a network of 12 hidden layers of width 100.
    """
    s = check_init_scale(scale)
    layers = []
    for l in range(1, len(sizes)):
        W = torch.stack([xavier_uniform((sizes[l], sizes[l - 1]), g, dtype) for g in generators])
        # scale 1 skips the product, so that the default weights are the Xavier draws themselves
        layers.append(W if s == 1.0 else W * s)
    return layers


def forward(
    Ws: Sequence[torch.Tensor], x: torch.Tensor, beta: float = BETA
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward pass z_l = W_l y_{l-1}, y_l = sigma(z_l); y_L = softmax(z_L).

    ``x`` is ``(T, n_0)`` (one sample per trial) or ``(T, N, n_0)`` (a batch per trial).
    Returns ``(zs, ys)``: ``zs[l-1] = z_l`` for l = 1..L and ``ys[l] = y_l`` for l = 0..L,
    where ``ys[L]`` is the softmax output (the post-synaptic activity the rules use).
    """
    single = x.dim() == 2
    y = x.unsqueeze(-1) if single else x.transpose(1, 2)  # (T, n_0, N)
    ys = [x]
    zs = []
    L = len(Ws)
    for l, W in enumerate(Ws, start=1):
        z = torch.bmm(W, y)  # (T, n_l, N)
        zt = z.squeeze(-1) if single else z.transpose(1, 2)
        zs.append(zt)
        if l < L:
            y = softplus(z, beta)
            ys.append(y.squeeze(-1) if single else y.transpose(1, 2))
        else:
            ys.append(torch.softmax(zt, dim=-1))
    return zs, ys


def logits(Ws: Sequence[torch.Tensor], x: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Output pre-activations z_L for a batch ``x: (T, N, n_0)`` -> ``(T, N, n_L)``."""
    h = x.transpose(1, 2)
    for l, W in enumerate(Ws, start=1):
        h = torch.bmm(W, h)
        if l < len(Ws):
            h = softplus(h, beta)
    return h.transpose(1, 2)
