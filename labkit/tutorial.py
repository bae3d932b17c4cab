"""What the tutorial notebooks share: result folders, figures and online learning curves.

The notebooks (``notebooks/NN_name.py``) import from here whatever more than one of them
uses, so that each notebook shows only what it teaches:

* :class:`Run` and :func:`load_or_run` -> one meta-training run, read from a committed
  results folder (as ``labkit discover`` writes it) or, when that is missing or in smoke
  mode, a *tiny* run computed afresh so that every cell still works (notebooks 01-03);
* :func:`save_figure` -> write a figure under a fixed name into the figures folder
  (notebooks 01-04);
* :func:`online_learning` -> the online learning curve of one rule under any registered
  feedback pathway (:mod:`labkit.pathways`), as in Fig. 1 of the paper: a fresh network
  sees a stream of images once, batch size 1, and is tested on held-out images every few
  samples (notebook 01, and the playground of notebook 04 through :mod:`labkit.widgets`);
  with ``phi`` the feedback matrices learn too (plastic feedback, notebook 05 and the
  playground), and the curves then also hold the angles between W_l and B_l^T.

Layering: this module sits on top of the library, like the command line (:mod:`labkit.cli`):
it imports :mod:`labkit.meta`, :mod:`labkit.results`, :mod:`labkit.data` and
:mod:`labkit.learner`, and only the notebook-facing :mod:`labkit.widgets` imports it.
Nothing below (data, learner, meta, results, plots, ...) may import it.
"""
from __future__ import annotations

import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import results
from .data import online_stream
from .feedback import check_kind, check_plastic_feedback, init_feedback, plastic_feedback_allowed
from .feedback_terms import N_FEEDBACK_TERMS
from .learner import learning_curve, online_train_plastic
from .meta import HIDDEN_PAPER, MetaConfig, MetaTrainer, trial_generators
from .metrics import alignment_angles, query_loss_and_accuracy, weight_angles
from .networks import check_init_scale, init_weights
from .rules import make_rule
from .terms import N_TERMS

#: Size of a meta-training run computed afresh by :func:`load_or_run` (a few seconds on a CPU):
#: it shows the mechanics only, its curves are noise.
TINY: dict[str, int] = dict(trials=2, episodes=3, K=5, Q=2)


class Run:
    """One meta-training run folder: its history, final theta, config and origin.

    Attributes:
        name: the run's name (its folder name under the results directory).
        folder: the folder read.
        source: ``"results"`` (a committed results folder) or ``"tiny"`` (computed afresh).
        history: ``history.csv`` as a DataFrame (:func:`labkit.results.read_history`).
        theta: ``theta.json`` (:func:`labkit.results.read_theta`): ``terms``, ``mean``, ...
        config: ``config.json`` (:func:`labkit.results.read_config`).
    """

    def __init__(self, name: str, folder: str | Path, source: str):
        self.name, self.folder, self.source = name, Path(folder), source
        self.history: pd.DataFrame = results.read_history(self.folder)
        self.theta: dict[str, Any] = results.read_theta(self.folder)
        self.config: dict[str, Any] = results.read_config(self.folder)

    @property
    def size(self) -> str:
        """``"<trials> trials x <episodes> episodes"``, as found in the history."""
        return f"{self.history['trial'].nunique()} trials x {self.history['episode'].nunique()} episodes"

    def mean_theta(self, r: int) -> float:
        """Mean final theta_r over the run's non-diverged trials (KeyError if r is not a term of its rule)."""
        return self.theta["mean"][f"theta_{r}"]

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {str(self.folder)!r}, source={self.source!r}, {self.size})"


def load_or_run(
    name: str, results_dir: str | Path, smoke: bool, tiny: dict[str, Any] | None = None, **cfg: Any
) -> Run:
    """Read the run ``results_dir/name``, or run a tiny meta-training afresh.

    The folder is read when it holds a finished run (``history.csv`` and ``theta.json``)
    and ``smoke`` is False. Otherwise a :class:`~labkit.meta.MetaTrainer` with
    ``MetaConfig(**{**tiny, **cfg})`` runs into a new temporary folder; ``tiny`` defaults
    to :data:`TINY`, and ``cfg`` (e.g. ``rule="fa"``, ``episodes=50``) overrides it. One
    line printed says which happened and why.

    Returns the :class:`Run`, with ``source`` ``"results"`` or ``"tiny"``.
    """
    folder = Path(results_dir) / name
    if not smoke and (folder / "history.csv").is_file() and (folder / results.THETA_FILE).is_file():
        run = Run(name, folder, "results")
        print(f"{name:7s}: loaded committed results from {folder} ({run.size}, {run.config['dataset']})")
        return run
    if smoke:
        why = "SMOKE mode"
    elif (folder / "history.csv").is_file():
        why = f"unfinished run at {folder} (no {results.THETA_FILE} yet)"
    else:
        why = f"no results at {folder}"
    out = Path(tempfile.mkdtemp(prefix=f"labkit_{name}_"))
    config = MetaConfig(**{**(TINY if tiny is None else tiny), **cfg})
    t0 = time.perf_counter()
    MetaTrainer(config, out=out).run(progress=False)
    run = Run(name, out, "tiny")
    print(f"{name:7s}: {why} -> ran a TINY meta-training afresh ({run.size}, K={config.K}, "
          f"Q={config.Q}) in {time.perf_counter() - t0:.1f} s; its curves are not meaningful")
    return run


def setup_notebook(seed: int = 0) -> None:
    """What every notebook's setup cell needs once: torch's and numpy's global seeds, and one
    torch thread (the notebooks' small mat-vecs run fastest on one thread, and several
    notebooks or widgets then share a CPU without contention)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def figure_folder(fig_dir: str | Path, smoke: bool) -> Path:
    """Where a notebook saves its figures: ``fig_dir``, except for a smoke run aimed at the
    repository's committed ``figures/`` folder, which gets a fresh temporary folder instead
    (figures of a smoke run never replace the committed ones)."""
    committed = Path(__file__).resolve().parents[1] / "figures"
    if smoke and Path(fig_dir).resolve() == committed:
        return Path(tempfile.mkdtemp(prefix="labkit_smoke_figures_"))
    return Path(fig_dir)


def save_figure(fig: Any, fig_dir: str | Path, filename: str) -> Path:
    """Save a matplotlib figure as ``fig_dir/filename`` (110 dpi, tight box), creating the
    folder if needed; prints and returns the path."""
    path = Path(fig_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print("saved", path)
    return path


def theta_vector(values: Mapping[int, float] | Sequence[float] | np.ndarray) -> np.ndarray:
    """A ``(N_TERMS,)`` float array (one theta_r per term of :data:`labkit.terms.TERMS`)
    from ``{term: value}`` or a full sequence of N_TERMS numbers."""
    return _coefficients(values, N_TERMS, "theta", "unused terms")


def _coefficients(values: Mapping[int, float] | Sequence[float] | np.ndarray, n: int, symbol: str,
                  zeros_for: str) -> np.ndarray:
    """``(n,)`` float array from ``{index: value}`` (the rest 0) or a full sequence of n numbers."""
    if isinstance(values, Mapping):
        out = np.zeros(n)
        for i, v in values.items():
            out[int(i)] = float(v)
        return out
    out = np.asarray(values, dtype=float).reshape(-1)
    if out.shape != (n,):
        raise ValueError(f"{symbol} needs {n} numbers (zeros for {zeros_for}), got {out.shape[0]}")
    return out


def phi_vector(values: Mapping[int, float] | Sequence[float] | np.ndarray | None) -> np.ndarray:
    """A ``(N_FEEDBACK_TERMS,)`` float array (one phi_s per feedback term of
    :data:`labkit.feedback_terms.FEEDBACK_TERMS`) from ``{term: value}``, a full sequence of
    N_FEEDBACK_TERMS numbers, or None (all zero: fixed feedback)."""
    if values is None:
        return np.zeros(N_FEEDBACK_TERMS)
    return _coefficients(values, N_FEEDBACK_TERMS, "phi", "fixed feedback terms")


def online_learning(
    feedback: str,
    theta: Mapping[int, float] | Sequence[float] | np.ndarray,
    n_samples: int,
    trials: int = 3,
    every: int = 50,
    dataset: str = "digits",
    data_root: str | None = None,
    seed: int = 0,
    hidden: Sequence[int] = HIDDEN_PAPER,
    n_eval: int = 300,
    init_scale: float = 1.0,
    phi: Mapping[int, float] | Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Online learning curve of one rule, ``trials`` independent networks (Fig. 1 of the paper).

    ``feedback`` is the name of any registered pathway (``labkit.pathways.names()``, e.g.
    "fa", "usf", "drtp").

    The data come from :func:`labkit.data.online_stream` ``(dataset, data_root, n_eval)``.
    Trial i draws its W (and B) and its order of the stream from ``trial_generators(seed, i)``,
    so different feedback pathways or rules start from the same W and see the same images;
    ``init_scale`` draws W at that multiple of the Xavier scale (:func:`labkit.networks.init_weights`).
    The rule's terms are those with theta_r != 0 (theta_0 alone if all are zero). One pass:
    ``n_samples`` is capped at the size of the stream. Results are cached (up to 32 calls).

    ``phi`` (plastic feedback, docs/plastic-feedback.md): one coefficient per feedback term of
    :data:`labkit.feedback_terms.FEEDBACK_TERMS` (see :func:`phi_vector`); the feedback terms
    with phi_s != 0 make the feedback matrices learn, ``B_l <- B_l + sum_s phi_s G^s``, by
    :func:`labkit.learner.online_train_plastic`. Plastic terms need a pathway that accepts
    them (``"fa"``). With ``phi=None`` (the default) the feedback is fixed and the curve is
    exactly that of :func:`labkit.learner.learning_curve`; with any ``phi`` (all zero
    included) the result also holds the W-vs-B^T angles.

    Returns numpy arrays ``steps (S,)``, ``accuracy (T, S)``, ``loss (T, S)``,
    ``alpha (T, S, L-1)`` (see :func:`labkit.learner.learning_curve`; with plastic feedback
    measured through the current B) plus ``n_samples`` (used), ``trials``, ``dataset``,
    ``n_classes`` (of the stream: chance accuracy is 1/n_classes), ``diverged (T,)``
    (non-finite final loss); when ``phi`` is given also ``weight_angle (T, S, L)``, the angle
    between W_l and B_l^T in degrees (:func:`labkit.metrics.weight_angles`), ``weight_gap
    (T, S, L)``, the Frobenius norm ||W_l - B_l^T|| (NaN for a pathway whose matrices are not
    shaped like W^T), and ``phi (4,)``.

    Raises:
        ValueError: unknown feedback pathway, theta or phi of the wrong length, or plastic
            feedback terms for a pathway that refuses them (the message says why).
        labkit.data.DatasetNotFoundError: the dataset's files are missing.
    """
    check_kind(feedback)  # the registry of labkit.pathways decides, also for pathways added later
    theta = theta_vector(theta)
    args = (feedback, tuple(theta.tolist()), int(n_samples), int(trials), int(every), dataset,
            None if data_root is None else str(data_root), int(seed), tuple(int(h) for h in hidden), int(n_eval),
            check_init_scale(init_scale))
    if phi is None:
        return dict(_online_learning_cached(*args))
    phi = phi_vector(phi)
    check_plastic_feedback(feedback, [s for s in range(N_FEEDBACK_TERMS) if phi[s] != 0.0])
    return dict(_plastic_learning_cached(*args, tuple(phi.tolist())))


@lru_cache(maxsize=32)
def _online_learning_cached(feedback, theta, n_samples, trials, every, dataset, data_root, seed, hidden, n_eval,
                            init_scale=1.0):
    x, y, x_eval, y_eval, n_classes = online_stream(dataset, data_root, n_eval)
    n = min(n_samples, len(x))
    sizes = (x.shape[1], *hidden, n_classes)
    gens = [trial_generators(seed, i) for i in range(trials)]
    order = torch.stack([torch.randperm(len(x), generator=g[0])[:n] for g in gens])  # (T, n)
    weight_gens = [g[1] for g in gens]
    Ws = init_weights(sizes, weight_gens, scale=init_scale)
    Bs = init_feedback(feedback, sizes, weight_gens)
    terms = [r for r in range(N_TERMS) if theta[r] != 0.0] or [0]
    rule = make_rule(terms, len(sizes) - 1)
    th = torch.tensor(theta, dtype=torch.float32).expand(trials, -1).contiguous()
    c = learning_curve(Ws, Bs, feedback, rule, th, x[order], y[order],
                       x_eval.expand(trials, -1, -1), y_eval.expand(trials, -1), every=every)
    out = {k: v.numpy() for k, v in c.items()}
    out.update(n_samples=n, trials=trials, dataset=dataset, n_classes=int(n_classes), diverged=~np.isfinite(out["loss"][:, -1]))
    return out


@lru_cache(maxsize=32)
def _plastic_learning_cached(feedback, theta, n_samples, trials, every, dataset, data_root, seed, hidden, n_eval,
                             init_scale, phi):
    """:func:`_online_learning_cached` with plastic feedback (phi_s != 0 terms) through
    :func:`labkit.learner.online_train_plastic`; the same draws of W, B and stream order, and
    the same measurements at the same steps, plus the W-vs-B^T angles."""
    x, y, x_eval, y_eval, n_classes = online_stream(dataset, data_root, n_eval)
    n = min(n_samples, len(x))
    sizes = (x.shape[1], *hidden, n_classes)
    gens = [trial_generators(seed, i) for i in range(trials)]
    order = torch.stack([torch.randperm(len(x), generator=g[0])[:n] for g in gens])  # (T, n)
    weight_gens = [g[1] for g in gens]
    Ws = init_weights(sizes, weight_gens, scale=init_scale)
    Bs = init_feedback(feedback, sizes, weight_gens)
    terms = [r for r in range(N_TERMS) if theta[r] != 0.0] or [0]
    fb_terms = [s for s in range(N_FEEDBACK_TERMS) if phi[s] != 0.0]
    rule = make_rule(terms, len(sizes) - 1)
    th = torch.tensor(theta, dtype=torch.float32).expand(trials, -1).contiguous()
    ph = torch.tensor(phi, dtype=torch.float32).expand(trials, -1).contiguous()
    x_ev, y_ev = x_eval.expand(trials, -1, -1), y_eval.expand(trials, -1)
    rec: dict[str, list] = {"steps": [], "accuracy": [], "loss": [], "alpha": [], "weight_angle": [], "weight_gap": []}
    gaps = plastic_feedback_allowed(feedback)  # B_l shaped like W_l^T: ||W_l - B_l^T|| is defined

    def record(step: int, W_now: list[torch.Tensor], B_now: list[torch.Tensor]) -> None:
        loss, acc = query_loss_and_accuracy(W_now, x_ev, y_ev)
        rec["steps"].append(step)
        rec["accuracy"].append(acc)
        rec["loss"].append(loss)
        rec["alpha"].append(alignment_angles(W_now, B_now, feedback, x_ev, y_ev))
        rec["weight_angle"].append(weight_angles(W_now, B_now, feedback))
        rec["weight_gap"].append(
            torch.stack([(W - B.transpose(1, 2)).flatten(1).norm(dim=1) for W, B in zip(W_now, B_now)], dim=-1)
            if gaps else torch.full((trials, len(W_now)), float("nan")))

    with torch.no_grad():
        online_train_plastic(Ws, Bs, feedback, rule, th, ph, fb_terms, x[order], y[order], callback=record,
                             every=every)
    out = {"steps": np.asarray(rec["steps"])}
    out.update({k: torch.stack(v, dim=1).numpy() for k, v in rec.items() if k != "steps"})
    out.update(n_samples=n, trials=trials, dataset=dataset, n_classes=int(n_classes),
               diverged=~np.isfinite(out["loss"][:, -1]), phi=np.asarray(phi))
    return out
