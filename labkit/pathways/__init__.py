"""Feedback pathways: how the output error reaches the hidden layers. One module per pathway.

A pathway forms the teaching signal of hidden layer j (code index, 0 = the input layer) as

    e_j = g_j * sigma'(z_j),   read from the output as sigma'(z_j) = 1 - exp(-beta y_j),

and a pathway is exactly the rule that gives g_j: backprop sends e_{j+1} back through the
current W_{j+1}^T, feedback alignment through a fixed random B_{j+1}, and so on. Each
pathway is one subclass of :class:`Pathway` in its own module of this package, registered
with :func:`register`; every module here is imported when the package is, so adding a file
is all it takes for the command line, the trainer, the metrics and the playground to offer
the new pathway (docs/architecture.md, "Add a pathway").

A pathway states:

* which matrices each trial draws (:meth:`Pathway.matrix_shapes`; drawn Xavier-uniform from
  the trial's weight generator, after its forward weights, by :meth:`Pathway.init`);
* the signal g_j (:meth:`Pathway.signal`), written once with two mat-vec callables that the
  engine supplies: ``mv(M, v) = M v`` and ``mtv(M, v) = M^T v`` for ``M: (T, a, b)`` and
  ``v: (T, b)`` (or ``(T, N, b)`` for a batch). The autograd engine gives differentiable
  ones, the hand-derived adjoint engine plain ones;
* the adjoint of that signal (:meth:`Pathway.signal_adjoint`): given gbar = dLoss/dg_j, what
  flows into the error gradients and into the weight gradient of the W it read;
* what the metrics need: the matrices B_l that play the role of W_l^T
  (:meth:`Pathway.feedback_matrices`; the "W_l vs B_l^T" angle exists only when they do).

Shapes follow :mod:`labkit.networks`: ``Ws[i]: (T, n_{i+1}, n_i)``; ``es[j]: (T, n_j)``;
``target``: the one-hot label ``(T, n_L)``. A matrix that plays the role of W_{j+1}^T has
shape ``(T, n_j, n_{j+1})``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, ClassVar, Sequence

import torch

from ..networks import xavier_uniform

MatVec = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Factor = tuple[torch.Tensor, torch.Tensor]


def accumulate(grads: list, k: int, x: torch.Tensor) -> None:
    """grads[k] += x, where None stands for zero (the adjoint engine's convention)."""
    grads[k] = x if grads[k] is None else grads[k] + x


class Pathway:
    """Base class of a feedback pathway (see the module docstring). Subclasses set the class
    attributes and implement :meth:`signal` and :meth:`signal_adjoint`."""

    #: registry key, used by ``--feedback`` and stored in ``config.json``
    name: ClassVar[str] = ""
    #: human-readable name, e.g. "feedback alignment"
    label: ClassVar[str] = ""
    #: g_j in plain text
    equation: ClassVar[str] = ""
    #: where it comes from
    reference: ClassVar[str] = ""
    #: position in menus and tables (the paper's three first)
    order: ClassVar[int] = 100
    #: True when B_l = W_l^T exactly (backprop): the weight angle is 0 by definition
    transports_weights: ClassVar[bool] = False
    #: True when the signal is exactly g_j = B_{j+1} e_{j+1} with free matrices B shaped like
    #: W_{j+1}^T (feedback alignment), so that B may be made plastic (labkit.feedback_terms): the
    #: engines then add d(B e)/dB = gbar e^T to B's gradient themselves.
    plastic_matrices: ClassVar[bool] = False
    #: for a pathway that refuses plastic feedback: why, and what to use instead
    plastic_refusal: ClassVar[str] = ""

    # ------------------------------------------------------------------ matrices
    def matrix_shapes(self, sizes: Sequence[int]) -> list[tuple[int, int]]:
        """Shapes of the matrices one trial draws, for layer sizes ``(n_0, ..., n_L)``."""
        return []

    @property
    def uses_matrices(self) -> bool:
        """Whether the pathway draws matrices of its own (fixed for an episode)."""
        return bool(self.matrix_shapes((2, 2, 2)))

    def init(
        self, sizes: Sequence[int], generators: Sequence[torch.Generator], dtype: torch.dtype = torch.float32
    ) -> list[torch.Tensor]:
        """The matrices of every trial, ``(T, *shape)`` each, drawn Xavier-uniform in the
        order of :meth:`matrix_shapes` from each trial's own generator."""
        return [torch.stack([xavier_uniform(s, g, dtype) for g in generators]) for s in self.matrix_shapes(sizes)]

    # ------------------------------------------------------------------ the signal
    def signal(
        self, j: int, Ws: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], es: Sequence[torch.Tensor | None],
        target: torch.Tensor, mv: MatVec, mtv: MatVec,
    ) -> torch.Tensor:
        """g_j, ``(T, n_j)`` (or ``(T, N, n_j)``); ``es[j+1:]`` are already formed."""
        raise NotImplementedError

    def signal_adjoint(
        self, j: int, Ws: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], es: Sequence[torch.Tensor | None],
        target: torch.Tensor, gbar: torch.Tensor, es_bar: list, mv: MatVec, mtv: MatVec,
    ) -> Factor | None:
        """Back-propagate ``gbar = dLoss/dg_j``: add into ``es_bar`` (with :func:`accumulate`)
        what flows to the errors g_j was made from, and return ``(left, right)``, each
        ``(T, n)``, when g_j also depends on the forward weights ``Ws[j]``:
        dLoss/dWs[j] += left right^T. Derivatives that are zero almost everywhere (sign())
        are zero here, as in autograd."""
        raise NotImplementedError

    # ------------------------------------------------------------------ metrics
    def feedback_matrices(self, Ws: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """B_l for l = 1..L, each ``(T, n_{l-1}, n_l)`` (the shape of W_l^T), or None when the
        pathway has no such matrices (then the W_l vs B_l^T angle does not exist)."""
        return None

    def __repr__(self) -> str:
        return f"<pathway {self.name}: {self.label}>"


def transposed_weight_shapes(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """One matrix per weight layer with the shape of W_l^T, (n_{l-1}, n_l), l = 1..L."""
    return [(sizes[l - 1], sizes[l]) for l in range(1, len(sizes))]


def output_projection_shapes(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """One matrix per layer j = 0..L-1 from the output, (n_j, n_L)."""
    L = len(sizes) - 1
    return [(sizes[j], sizes[L]) for j in range(L)]


_REGISTRY: dict[str, Pathway] = {}


def register(cls: type[Pathway]) -> type[Pathway]:
    """Class decorator: make the pathway available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"two pathways are called {cls.name!r}: {type(_REGISTRY[cls.name]).__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    """Every registered pathway's name, the paper's three (bp, fa, dfa) first."""
    return tuple(sorted(_REGISTRY, key=lambda k: (_REGISTRY[k].order, k)))


def get(name: str) -> Pathway:
    """The pathway called ``name`` (a ValueError listing the choices otherwise)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown feedback pathway {name!r}; choose one of {', '.join(names())}") from None


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
