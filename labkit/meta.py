"""Meta-training of the plasticity coefficients theta: the loop, its settings and its records.

Per episode and trial: draw a task, re-initialise W and the feedback pathway's matrices,
train online with theta, and take an Adam step on theta against the query cross-entropy plus
lambda * ||theta||_1, with the exact meta-gradient through the unrolled episode
(:func:`labkit.learner.meta_gradient`). T trials run as one batched computation; trial i
draws everything from generators seeded by (seed, i) (:func:`trial_generators`), so it
produces the same numbers whether it runs alone or among others.

The pieces live in their own modules: how theta moves (Adam with a per-trial mask, the L1
penalty, warm-up and per-term step sizes) in :mod:`labkit.optim`; what happens to a trial
whose meta-step looks wrong (skips, clipping, rollbacks, divergence) in :mod:`labkit.guards`;
evaluating a learned rule on fresh tasks in :mod:`labkit.evaluation`. docs/architecture.md
tells the story. Here: :class:`MetaConfig` (every setting, validated), :class:`MetaTrainer`
(the loop, the episode draw, checkpoints and resume), :class:`RunSummary`, and the trial
chunking and worker processes of :func:`chunked_meta_gradient`.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .data import EpisodeSampler, load_dataset, split_classes, stack_episodes
from .feedback import check_kind, check_plastic_feedback, init_feedback
from .feedback_terms import FEEDBACK_TERM_NAMES, N_FEEDBACK_TERMS
from .guards import ROLLBACK_SNAPSHOT, Guards
from .learner import GRAD_MODES, Episodic, MetaGradient, meta_gradient
from .metrics import alignment_angles, orthonormality, weight_angles
from .networks import BETA, check_init_scale, init_weights
from .optim import MaskedAdam, l1_proximal, l1_subgradient, term_scales, warmup_factor
from .results import FolderLock, HistoryWriter, check_writable, final_accuracy, write_config, write_theta
from .rules import Rule, make_rule
from .terms import DEFAULT_FEEDBACK, N_TERMS

__all__ = [
    "MetaConfig", "MetaTrainer", "RunSummary", "DivergenceError", "CheckpointError", "trial_generators",
    "slice_state", "merge_states", "compile_choice", "compiler_available", "COMPILE_AUTO_MIN",
    "chunked_meta_gradient", "HIDDEN_PAPER", "DEFAULT_LAMBDA", "DEFAULT_META_LR",
    "CHECKPOINT_FILE",
    # moved to labkit.optim / labkit.guards, importable from here as before
    "MaskedAdam", "term_scales", "ROLLBACK_SNAPSHOT",
]

CHECKPOINT_FILE = "checkpoint.pt"
HIDDEN_PAPER: tuple[int, ...] = (170, 130, 100, 70)
# Default L1 strength per rule: lambda = 0 for the fixed-term rules (the paper's baselines),
# and for the pool the value found in docs/lambda.md.
DEFAULT_LAMBDA: dict[str, float] = {"pool": 1e-3}
# Meta learning rate (Adam) per named rule, else 1e-3 (the paper's). The ten-term pool is
# stable only with a smaller one on digits: at 1e-3 its trials rise to ~60% by episode 40 and
# then most collapse to chance or diverge; at 3e-4 all 8 pilot trials kept rising (docs/stability.md).
DEFAULT_META_LR: dict[str, float] = {"pool": 3e-4}
# What a setting newer than a checkpoint meant before it existed (resume compares with this)
LEGACY_SETTINGS: dict[str, Any] = {"rollback_explosive": 0}


#: Trial-episodes from which compiling pays back its one-off cost (docs/speed.md): compiling
#: takes ~10-60 s; it saves ~0.02-0.1 s per trial-episode at the paper's network.
COMPILE_AUTO_MIN = 400


def compiler_available() -> bool:
    """Whether a C++ compiler is on the PATH (torch.compile's CPU backend needs one)."""
    import shutil

    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def compile_choice(config: "MetaConfig") -> tuple[bool, str]:
    """What ``compile="auto"`` means for ``config``: (compile?, why), the why in one line.

    Compile when the meta-gradient is the hand-derived adjoint (the only engine with compiled
    steps), the run is long enough to pay back the compilation (at least
    :data:`COMPILE_AUTO_MIN` trial-episodes) and a C++ compiler is present. Compiled kernels
    round differently from eager ones, so the numbers differ in the last bits; ``--compile
    off`` keeps the eager path.
    """
    if config.grad_mode != "adjoint":
        return False, f"not compiled: grad mode {config.grad_mode} has no compiled steps"
    work = config.trials * config.episodes
    if work < COMPILE_AUTO_MIN:
        return False, f"not compiled: {work} trial-episodes are too few to pay back compiling (< {COMPILE_AUTO_MIN})"
    if not compiler_available():
        return False, ("not compiled: no C++ compiler (g++/clang++) on the PATH; install one for a ~1.5-2x "
                       "faster run, or pass --compile off to silence this note")
    return True, f"compiled (--compile auto: {work} trial-episodes, a C++ compiler present; --compile off for eager)"


class DivergenceError(RuntimeError):
    """Every trial of a run diverged."""


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read or does not belong to this configuration."""


@dataclass
class MetaConfig:
    """Every setting of a meta-training run (written to ``config.json``).

    The guards' settings (``clip``, ``explosive``, ``skip_nonfinite``, ``patience``,
    ``rollback``, ``max_rollbacks``, ``rollback_explosive``) are explained in
    :mod:`labkit.guards`; ``l1``, ``warmup`` and ``term_scaling`` in :mod:`labkit.optim`.

    ``feedback_rule`` (plastic feedback, docs/plastic-feedback.md): ``None`` (default) keeps the
    feedback pathway's matrices fixed, as in the paper. Otherwise the feedback matrices learn
    too, after every sample, ``B_l <- B_l + sum_s phi_s G^s``, with the terms G^s named by
    ``feedback_rule`` (a name of :data:`labkit.feedback_terms.NAMED_FEEDBACK_RULES` such as
    ``"kp"``, or a term list such as ``"0,1"``) and a second coefficient vector phi, shape
    (T, N_FEEDBACK_TERMS), meta-learned beside theta. **phi starts at 0** in every trial (so
    the first episode's inner loop is that of fixed feedback; phi's meta-gradient there is the
    first-order effect of switching plasticity on). theta and phi form one coefficient vector
    of the trainer (T, N_TERMS + N_FEEDBACK_TERMS): one Adam, the same guards, rollbacks, L1
    (``lam``, ``l1``), warm-up and meta learning rate; phi's step is not rescaled by term
    scaling (factor 1). Only pathways with free matrices standing for W^T accept it (``"fa"``).
    """

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    input_scale: float | str = "auto"
    rule: str | list = "pool"
    feedback: str | None = None  # a registered pathway; default: "bp" for rule "bp", "dfa" for "dfa", else "fa"
    # plastic feedback (docs/plastic-feedback.md): None keeps the pathway's matrices fixed; else the
    # feedback terms G^s that make them plastic, a name of labkit.feedback_terms ("kp", "ehebb",
    # "oja", "pool") or a term list ("0,1"); their coefficients phi start at 0
    feedback_rule: str | None = None
    hidden: tuple[int, ...] = HIDDEN_PAPER  # any depth: (100,) * 12 is 12 hidden layers of width 100
    init_scale: float = 1.0  # forward weights drawn at this multiple of the Xavier scale (labkit.networks.init_weights)
    M: int = 5
    K: int = 50
    Q: int = 10
    remap_labels: bool = False
    test_classes: int = 0  # classes held out for meta-testing (never seen in meta-training)
    episodes: int = 600
    trials: int = 4
    lam: float | None = None  # L1 strength; None -> DEFAULT_LAMBDA.get(rule, 0)
    l1: str = "coupled"  # "coupled": lam*sign(theta) joins the meta-gradient; "proximal": soft-thresholding after the step
    meta_lr: float | None = None  # Adam's learning rate on theta; None -> DEFAULT_META_LR.get(rule, 1e-3)
    theta0: float = 1e-3
    seed: int = 0
    grad_mode: str = "adjoint"
    compile: bool | str = "auto"  # torch.compile the adjoint's steps: True, False, or "auto" (compile_choice)
    chunk: int = 4  # trials per batched inner loop (more are run chunk by chunk; see chunked_meta_gradient)
    clip: float | None = 10.0
    explosive: str = "skip"  # what to do with a meta-gradient above clip x recent median: "skip" or "clip"
    warmup: int | None = None  # None -> 20 episodes for rules with several terms, 0 for one term
    skip_nonfinite: bool = True
    patience: int = 10
    rollback: int = 3  # non-finite episodes in a row before a trial rolls back (0: never)
    max_rollbacks: int = 3  # per trial; after that, patience decides
    rollback_explosive: int = 5  # explosive meta-gradients among the last 10 episodes that trigger a rollback (0: never)
    term_scaling: bool = True
    checkpoint_every: int = 25
    dtype: str = "float32"
    threads: int | None = None  # torch threads per process; None: 1 (numbers then do not depend on the cores)
    workers: int = 1  # processes computing meta-gradients of separate trial chunks (see chunked_meta_gradient)

    def resolved(self) -> "MetaConfig":
        """A copy with defaults filled in and every setting validated (raises ValueError)."""
        c = dataclasses.replace(self)
        rule_key = c.rule.strip().lower() if isinstance(c.rule, str) else None
        if c.feedback is None:
            c.feedback = DEFAULT_FEEDBACK.get(rule_key, "fa")
        check_kind(c.feedback)  # a registered pathway (labkit.pathways), else a ValueError naming them
        if c.lam is None:
            c.lam = DEFAULT_LAMBDA.get(rule_key, 0.0)
        if c.meta_lr is None:
            c.meta_lr = DEFAULT_META_LR.get(rule_key, 1e-3)
        c.feedback_rule = _normalise_feedback_rule(c.feedback_rule)
        feedback_terms = check_plastic_feedback(c.feedback, c.feedback_rule or ())  # unknown term, refused pathway
        if not feedback_terms:
            c.feedback_rule = None
        if c.warmup is None:
            # Adam's sign-sized first steps hit every meta-learned coefficient, phi's too
            n_coef = len(make_rule(c.rule, len(c.hidden) + 1).terms) + len(feedback_terms)
            c.warmup = 20 if n_coef > 1 else 0
        if isinstance(c.compile, str):
            key = c.compile.strip().lower()
            if key not in ("auto", "on", "off", "true", "false"):
                raise ValueError(f"compile must be auto, on or off, got {c.compile!r}")
            c.compile = (key in ("on", "true")) if key != "auto" else "auto"
        checks = [
            (c.episodes >= 1, f"episodes must be >= 1, got {c.episodes}"),
            (c.trials >= 1, f"trials must be >= 1, got {c.trials}"),
            (c.lam >= 0, f"lambda (L1 strength) must be >= 0, got {c.lam}"),
            (c.l1 in ("coupled", "proximal"), f"l1 must be 'coupled' or 'proximal', got {c.l1!r}"),
            (c.meta_lr > 0, f"meta learning rate must be > 0, got {c.meta_lr}"),
            (c.grad_mode in GRAD_MODES, f"grad mode must be one of {', '.join(GRAD_MODES)}, got {c.grad_mode!r}"),
            (c.compile in (False, "auto") or c.grad_mode == "adjoint", "compile works with grad mode 'adjoint' only"),
            (c.clip is None or c.clip > 0, f"clip must be > 0 (or off), got {c.clip}"),
            (c.explosive in ("skip", "clip"), f"explosive must be 'skip' or 'clip', got {c.explosive!r}"),
            (c.warmup >= 0, f"warmup must be >= 0 episodes, got {c.warmup}"),
            (c.patience >= 1, f"patience must be >= 1, got {c.patience}"),
            (c.rollback >= 0, f"rollback must be >= 0 (0 = off), got {c.rollback}"),
            (c.max_rollbacks >= 0, f"max rollbacks must be >= 0, got {c.max_rollbacks}"),
            (0 <= c.rollback_explosive <= ROLLBACK_SNAPSHOT,
             f"rollback-explosive counts explosive episodes among the last {ROLLBACK_SNAPSHOT}: "
             f"0 (never) to {ROLLBACK_SNAPSHOT}, got {c.rollback_explosive}"),
            (c.chunk >= 1, f"chunk (trials per batched inner loop) must be >= 1, got {c.chunk}"),
            (c.workers >= 1, f"workers (processes) must be >= 1, got {c.workers}"),
            (c.checkpoint_every >= 1, f"checkpoint interval must be >= 1, got {c.checkpoint_every}"),
            (c.dtype in ("float32", "float64"), f"dtype must be float32 or float64, got {c.dtype!r}"),
            (all(int(h) >= 1 for h in c.hidden), f"hidden layer sizes must be positive, got {c.hidden}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if c.compile == "auto":
            c.compile = compile_choice(c)[0]
        c.compile = bool(c.compile)
        c.hidden = tuple(int(h) for h in c.hidden)
        c.init_scale = check_init_scale(c.init_scale)
        make_rule(c.rule, len(c.hidden) + 1)  # validates the rule spec
        return c


def _normalise_feedback_rule(spec: Any) -> str | None:
    """``MetaConfig.feedback_rule`` as stored: None for fixed feedback (None, ``""``, ``"none"``,
    an empty list), else a stripped lower-case name or comma-separated list (a sequence of term
    indices becomes ``"0,1"``). Validity is checked by :func:`labkit.feedback.check_plastic_feedback`."""
    if spec is None:
        return None
    if isinstance(spec, (int, np.integer)):
        spec = str(int(spec))
    elif not isinstance(spec, str):
        try:
            spec = ",".join(str(int(s)) for s in spec)
        except (TypeError, ValueError):
            raise ValueError(f"feedback rule must be a name or a list of feedback terms, got {spec!r}") from None
    key = spec.strip().lower()
    return None if key in ("", "none") else key


def _git(*args: str) -> str | None:
    """Output of ``git ARGS`` in the labkit checkout; None when it is not one (or git is missing)."""
    import subprocess

    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit() -> str | None:
    """The commit of the labkit checkout, when it is a git checkout (for config.json)."""
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> bool | None:
    """Whether tracked files of the checkout differ from its commit (None: not a git checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


#: Environment variable that carries the command line of a run to the processes that write its
#: config.json (the CLI sets it; Dask workers receive it with their task).
COMMAND_ENV = "LABKIT_COMMAND"


class command_line:
    """Context manager: within it, runs record ``command`` as their command line
    (``$LABKIT_COMMAND``); the previous value is restored on exit. ``None`` changes nothing."""

    def __init__(self, command: str | None):
        self.command = command

    def __enter__(self) -> None:
        self.before = os.environ.get(COMMAND_ENV)
        if self.command is not None:
            os.environ[COMMAND_ENV] = self.command

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            os.environ.pop(COMMAND_ENV, None)
        else:
            os.environ[COMMAND_ENV] = self.before


def run_command() -> str:
    """The command line that started this run: ``$LABKIT_COMMAND`` (set by the ``labkit`` CLI,
    e.g. ``labkit discover --rule bio``), else this process's own ``sys.argv``."""
    import shlex

    return os.environ.get(COMMAND_ENV) or shlex.join([Path(sys.argv[0]).name if sys.argv else "python",
                                                      *sys.argv[1:]])


def trial_generators(seed: int, trial: int) -> tuple[torch.Generator, torch.Generator]:
    """(task generator, weight generator) of trial ``trial``, derived from (seed, trial) only."""
    a, b = np.random.SeedSequence([int(seed), int(trial)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(a) >> 1), torch.Generator().manual_seed(int(b) >> 1)


@dataclass
class RunSummary:
    """What a finished (or interrupted) run reports."""

    out: Path | None
    theta: np.ndarray  # (T, N_TERMS)
    terms: tuple[int, ...]
    diverged: np.ndarray  # (T,) bool
    final_accuracy: tuple[float, float, float]  # mean, low, high over trials (last 10 episodes)
    guarded_steps: int
    episodes_done: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    phi: np.ndarray | None = None  # (T, N_FEEDBACK_TERMS) with plastic feedback, else None
    feedback_terms: tuple[int, ...] = ()  # the plastic feedback terms (empty: fixed feedback)

    def text(self) -> str:
        mean, lo, hi = self.final_accuracy
        n = len(self.diverged)
        kept = [r for r in self.terms if np.nanmax(np.abs(self.theta[~self.diverged][:, r]), initial=0.0) > 1e-4]
        lines = [
            f"finished {self.episodes_done} episodes x {n} trials in {self.seconds:.0f} s",
            f"meta-accuracy (mean of last 10 episodes): {100 * mean:.1f}% (98% CI {100 * lo:.1f}-{100 * hi:.1f}%)",
            f"diverged trials: {int(self.diverged.sum())} of {n}; guarded steps: {self.guarded_steps}",
            "theta (mean over trials): "
            + ", ".join(f"theta_{r}={np.nanmean(self.theta[~self.diverged][:, r]):.2e}" for r in self.terms),
            f"surviving terms (|theta_r| > 1e-4): {kept}",
        ]
        if self.phi is not None and self.feedback_terms:
            lines.append("phi (mean over trials): " + ", ".join(
                f"phi_{s}={np.nanmean(self.phi[~self.diverged][:, s]):.2e} ({FEEDBACK_TERM_NAMES[s]})"
                for s in self.feedback_terms))
        if self.out is not None:
            lines.append(f"results in {self.out}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- trial chunks and workers
def _worker_meta_gradient(theta: torch.Tensor, ep: Episodic, grad_mode: str, compile: bool,
                          threads: int | None, phi: torch.Tensor | None = None) -> MetaGradient:
    from .workers import set_worker_threads

    set_worker_threads(threads)
    return _meta_gradient(theta, ep, grad_mode, compile, phi)


def _meta_gradient(theta: torch.Tensor, ep: Episodic, grad_mode: str, compile: bool,
                   phi: torch.Tensor | None) -> MetaGradient:
    """:func:`labkit.learner.meta_gradient`, called exactly as before plastic feedback when
    ``phi`` is None (stand-ins that tests put in its place know no ``phi``)."""
    if phi is None:
        return meta_gradient(theta, ep, grad_mode, compile=compile)
    return meta_gradient(theta, ep, grad_mode, compile=compile, phi=phi)


def chunked_meta_gradient(theta: torch.Tensor, ep: Episodic, c: MetaConfig, client=None,
                          phi: torch.Tensor | None = None) -> MetaGradient:
    """The meta-gradient of T trials, computed ``c.chunk`` trials at a time (settings
    ``c.grad_mode``, ``c.compile``, ``c.chunk`` and ``c.workers`` of a :class:`MetaConfig`).

    ``phi`` (T, N_FEEDBACK_TERMS): the feedback terms' coefficients when ``ep.feedback_terms``
    makes the feedback plastic (else None); it is cut into the same chunks as theta, and the
    result's ``phi_grad`` (T, N_FEEDBACK_TERMS) and adapted ``Bs`` are put back together.

    Trials are independent, so chunking changes no number (tested); it changes speed: the
    inner loop streams every trial's weights through the cache at every step, and past a few
    trials they no longer fit (benchmarks/: 4 trials per batch is fastest on a 2-core CPU).
    With a Dask ``client`` (:func:`labkit.workers.connect`) of ``c.workers`` single-threaded
    workers, the chunks (a multiple of the workers, equal in size) run in parallel, one
    process per core: many small operations per plasticity step scale poorly over threads
    inside one process, but two processes on two cores run at twice the speed of one. (This
    is the "episode" split; ``labkit discover`` splits the trials of a whole run instead,
    :mod:`labkit.runs`, which is faster: docs/scale-out.md.)
    """
    pool = client
    T = theta.shape[0]
    if pool is None or c.compile:
        # compiled kernels are made per batch size: the chunks of one process, whatever the workers
        if pool is None and T <= c.chunk:
            return _meta_gradient(theta, ep, c.grad_mode, c.compile, phi)
        bounds = [(a, min(T, a + c.chunk)) for a in range(0, T, c.chunk)]
    else:
        # as many chunks as keep every worker busy to the end: a multiple of the workers,
        # of at most c.chunk trials each, with sizes differing by at most one
        n = min(T, c.workers * -(-T // (c.workers * c.chunk)))
        cuts = [round(k * T / n) for k in range(n + 1)]
        bounds = list(zip(cuts[:-1], cuts[1:]))
    subs = []
    for a, b in bounds:
        # for a worker, copies: a pickled view would carry its whole storage (every trial) along
        cut = (lambda t: t[a:b]) if pool is None else (lambda t: t[a:b].clone())
        sub = dataclasses.replace(
            ep, Ws=[cut(W) for W in ep.Ws], Bs=[cut(B) for B in ep.Bs], x_train=cut(ep.x_train),
            y_train=cut(ep.y_train), x_query=cut(ep.x_query), y_query=cut(ep.y_query),
        )
        subs.append((cut(theta), sub, None if phi is None else cut(phi)))
    if pool is None:
        parts = [_meta_gradient(th, sub, c.grad_mode, c.compile, ph) for th, sub, ph in subs]
    else:
        from distributed import KilledWorker

        try:
            futures = [pool.submit(_worker_meta_gradient, th, sub, c.grad_mode, c.compile, c.threads, ph, pure=False)
                       for th, sub, ph in subs]
            parts = [f.result() for f in futures]
        except KilledWorker as err:
            raise RuntimeError(
                "a worker process stopped unexpectedly (out of memory, or killed); the results up to "
                "the last completed episode are kept: continue with --resume, with fewer --workers "
                "(or 1) if it happens again"
            ) from err
    plastic = parts[0].phi_grad is not None
    return MetaGradient(
        torch.cat([p.loss for p in parts]), torch.cat([p.accuracy for p in parts]),
        torch.cat([p.grad for p in parts]), [torch.cat(ws) for ws in zip(*(p.Ws for p in parts))],
        torch.cat([p.phi_grad for p in parts]) if plastic else None,
        [torch.cat(bs) for bs in zip(*(p.Bs for p in parts))] if plastic else None,
    )


# ---------------------------------------------------------------------- checkpoint states over trials
def slice_state(state: dict, rows: Sequence[int]) -> dict:
    """The checkpoint state of a run restricted to the trials at positions ``rows``.

    Every per-trial tensor (theta, phi when the feedback is plastic, Adam's moments and step
    counts, the guards' state) is cut along its first axis; the guards' count of guarded
    steps, a total, stays with the part that holds position 0, so that :func:`merge_states`
    adds it back up.
    """
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    guards = {k: (v[idx].clone() if torch.is_tensor(v) else v) for k, v in state["guards"].items()}
    guards["guarded_steps"] = state["guards"]["guarded_steps"] if 0 in list(rows) else 0
    trials = state.get("trials", list(range(len(state["task_gens"]))))
    extra = {"phi": state["phi"][idx].clone()} if state.get("phi") is not None else {}
    return {
        **state,
        **extra,
        "theta": state["theta"][idx].clone(),
        "adam": {k: v[idx].clone() for k, v in state["adam"].items()},
        "task_gens": [state["task_gens"][i] for i in rows],
        "weight_gens": [state["weight_gens"][i] for i in rows],
        "guards": guards,
        "trials": [trials[i] for i in rows],
    }


def merge_states(states: Sequence[dict]) -> dict:
    """One checkpoint state from the states of runs over disjoint trials, rows in trial order.

    The episode is the largest of the parts': a part whose trials all stopped ends early, and
    a stopped trial's state no longer changes, so it stands for any later episode too.
    """
    order = sorted(range(len(states)), key=lambda k: min(states[k]["trials"]))
    sts = [states[k] for k in order]
    first = sts[0]
    extra = {"phi": torch.cat([s["phi"] for s in sts])} if first.get("phi") is not None else {}
    guards = {}
    for k, v in first["guards"].items():
        guards[k] = torch.cat([s["guards"][k] for s in sts]) if torch.is_tensor(v) else sum(
            s["guards"][k] for s in sts)
    return {
        **first,
        "episode": max(int(s["episode"]) for s in sts),
        "theta": torch.cat([s["theta"] for s in sts]),
        "adam": {k: torch.cat([s["adam"][k] for s in sts]) for k in first["adam"]},
        "task_gens": [g for s in sts for g in s["task_gens"]],
        "weight_gens": [g for s in sts for g in s["weight_gens"]],
        "guards": guards,
        "trials": [i for s in sts for i in s["trials"]],
        **extra,
    }


# ---------------------------------------------------------------------- the trainer
class MetaTrainer:
    """Meta-trains theta for T batched trials; writes results and checkpoints to ``out``.

    Usage::

        trainer = MetaTrainer(MetaConfig(rule="bio", episodes=50), out="runs/bio")
        summary = trainer.run()

    State: ``theta`` (T, N_TERMS), ``adam`` (:class:`labkit.optim.MaskedAdam`), ``guards``
    (:class:`labkit.guards.Guards`: every per-trial guard counter, the rollback snapshots,
    which trials stopped), ``episode`` (episodes begun), each trial's generators
    ``task_gens`` and ``weight_gens``.

    With plastic feedback (``config.feedback_rule``), also ``phi`` (T, N_FEEDBACK_TERMS),
    starting at 0 (None with fixed feedback), and ``feedback_terms``, the active G^s. theta and
    phi are then one coefficient vector to the optimiser and the guards,
    ``[theta | phi]`` (T, N_TERMS + N_FEEDBACK_TERMS) (:meth:`coefficients`): Adam's moments,
    the rollback snapshots, the norm the explosive guard judges, the L1 penalty, the warm-up
    and the mask of active coefficients cover both; phi's step has scale 1 (no term scaling).
    With fixed feedback everything is exactly as before (theta alone).
    """

    def __init__(self, config: MetaConfig, out: str | os.PathLike | None = None, resume: bool = False,
                 trials: Sequence[int] | None = None, token: str | None = None):
        """``trials``: the (global) trial indices this trainer runs, default all ``config.trials``
        (a distributed run gives each worker a part, :mod:`labkit.cluster`); trial i draws from
        (seed, i) whichever part it is in. ``token``: the run's token for the folder lock
        (:class:`labkit.results.FolderLock`)."""
        self.config = c = config.resolved()
        self.requested_compile = config.compile
        self.trial_ids = list(range(c.trials)) if trials is None else [int(i) for i in trials]
        if not self.trial_ids or min(self.trial_ids) < 0 or max(self.trial_ids) >= c.trials:
            raise ValueError(f"trials must be indices in 0..{c.trials - 1}, got {self.trial_ids}")
        self.dtype = torch.float64 if c.dtype == "float64" else torch.float32
        self.dataset = load_dataset(c.dataset, c.data_root, c.download, "train", c.input_scale)
        classes = None
        if c.test_classes:
            classes, self.test_class_list = split_classes(self.dataset.n_classes, c.test_classes, c.seed)
        else:
            self.test_class_list = []
        self.sampler = EpisodeSampler(self.dataset, c.M, c.K, c.Q, classes=classes, remap_labels=c.remap_labels)
        self.sizes = (self.dataset.images.shape[1], *c.hidden, self.sampler.n_outputs)
        self.L = len(self.sizes) - 1
        self.rule: Rule = make_rule(c.rule, self.L)
        self.terms = self.rule.terms
        self.active = torch.zeros(N_TERMS, dtype=torch.bool)
        self.active[list(self.terms)] = True
        self.feedback_terms: tuple[int, ...] = check_plastic_feedback(c.feedback, c.feedback_rule or ())
        T = len(self.trial_ids)
        n_coef = N_TERMS + (N_FEEDBACK_TERMS if self.feedback_terms else 0)
        self.term_scale = torch.ones(N_TERMS, dtype=self.dtype)
        if c.term_scaling and len(self.terms) > 1:
            self.term_scale = term_scales(self.sampler, self.sizes, c.feedback, c.theta0, c.seed).to(self.dtype)
        self.theta = torch.zeros(T, N_TERMS, dtype=self.dtype)
        self.theta[:, 0] = c.theta0
        self.phi: torch.Tensor | None = (torch.zeros(T, N_FEEDBACK_TERMS, dtype=self.dtype)
                                         if self.feedback_terms else None)
        self.adam = MaskedAdam((T, n_coef), c.meta_lr, dtype=self.dtype)
        gens = [trial_generators(c.seed, i) for i in self.trial_ids]
        self.task_gens = [g[0] for g in gens]
        self.weight_gens = [g[1] for g in gens]
        self.guards = Guards.from_config(c, n_coef, self.dtype, trials=T)
        self.episode = 0
        self.out = Path(out) if out is not None else None
        self._consistent: dict | None = None
        self._pool = None  # a Dask client while run() splits episodes over workers (split "episode")
        self.writer: HistoryWriter | None = None
        self.lock: FolderLock | None = None
        if self.out is not None:
            check_writable(self.out)
            ckpt = self.out / CHECKPOINT_FILE
            if resume and not ckpt.exists():
                raise CheckpointError(
                    f"--resume: {self.out} has no {CHECKPOINT_FILE} to continue from"
                    + (" (it holds a history.csv without one: choose another --out folder to start afresh)"
                       if (self.out / "history.csv").exists() else "; run without --resume to start a new run")
                )
            if not resume and (self.out / "history.csv").exists():
                raise FileExistsError(
                    f"{self.out} already holds a run (history.csv); pass --resume to continue it, "
                    "or choose another --out folder"
                )
            self.lock = FolderLock(self.out, token).acquire()
            try:
                if resume:
                    self._load_checkpoint(ckpt)
                self.writer = HistoryWriter(self.out, self.L, truncate_after_episode=self.episode,
                                            plastic_feedback=bool(self.feedback_terms))
                write_config(self.out, self.config_record())
            except BaseException:
                self.lock.release()
                raise

    # ------------------------------------------------------------------ the guards' state, by name
    @property
    def stopped(self) -> torch.Tensor:
        """(T,) bool: the trials that diverged and were stopped."""
        return self.guards.stopped

    @property
    def guarded_steps(self) -> int:
        """Guard actions so far (skips, clips, rollbacks), over all trials."""
        return self.guards.guarded_steps

    @property
    def lr_factor(self) -> torch.Tensor:
        """(T,): each trial's meta learning rate factor (halved at each rollback)."""
        return self.guards.lr_factor

    @property
    def rollbacks(self) -> torch.Tensor:
        """(T,): each trial's rollbacks so far."""
        return self.guards.rollbacks

    # ------------------------------------------------------------------ theta and phi as one vector
    def coefficients(self) -> torch.Tensor:
        """What the optimiser and the guards move: ``theta`` (T, N_TERMS) itself with fixed
        feedback, else a new tensor ``[theta | phi]`` (T, N_TERMS + N_FEEDBACK_TERMS)."""
        return self.theta if self.phi is None else torch.cat([self.theta, self.phi], dim=1)

    def _set_coefficients(self, coef: torch.Tensor) -> None:
        if self.phi is None:
            self.theta = coef
        else:
            self.theta, self.phi = coef[:, :N_TERMS].clone(), coef[:, N_TERMS:].clone()

    def active_coefficients(self) -> torch.Tensor:
        """(R,) bool: which coefficients of :meth:`coefficients` are meta-learned (the rule's
        terms, then the plastic feedback terms); the others keep exact zero gradients."""
        if self.phi is None:
            return self.active
        fb = torch.zeros(N_FEEDBACK_TERMS, dtype=torch.bool)
        fb[list(self.feedback_terms)] = True
        return torch.cat([self.active, fb])

    def coefficient_scale(self) -> torch.Tensor:
        """(R,): the multipliers of each coefficient's Adam step, ``term_scale`` for theta
        (:func:`labkit.optim.term_scales`) and 1 for phi."""
        if self.phi is None:
            return self.term_scale
        return torch.cat([self.term_scale, torch.ones(N_FEEDBACK_TERMS, dtype=self.term_scale.dtype)])

    # ------------------------------------------------------------------ records
    def config_record(self) -> dict:
        d = dataclasses.asdict(self.config)
        d.update(
            sizes=list(self.sizes),
            terms=list(self.terms),
            layer_terms=[list(t) for t in self.rule.layer_terms],
            n_outputs=self.sampler.n_outputs,
            input_scale_used=self.dataset.input_scale,
            term_scale=[round(float(v), 6) for v in self.term_scale],
            meta_test_classes=self.test_class_list,
            versions={
                "labkit": __version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "git_commit": _git_commit(),
                "git_dirty": _git_dirty(),
            },
            command=run_command(),
        )
        if self.feedback_terms:  # plastic feedback only: fixed-feedback records keep their keys
            d["feedback_terms"] = list(self.feedback_terms)
        return d

    def checkpoint_state(self) -> dict:
        """A deep copy of everything a resumed run needs (taken between episodes only)."""
        return {
            "episode": self.episode,
            "theta": self.theta.clone(),
            **({"phi": self.phi.clone()} if self.phi is not None else {}),
            "adam": {k: v.clone() for k, v in self.adam.state_dict().items()},
            "task_gens": [g.get_state() for g in self.task_gens],
            "weight_gens": [g.get_state() for g in self.weight_gens],
            "guards": self.guards.state_dict(),
            "term_scale": self.term_scale.clone(),
            "config": dataclasses.asdict(self.config),
            "trials": list(self.trial_ids),
        }

    def save_checkpoint(self, state: dict | None = None) -> Path:
        """Write ``checkpoint.pt`` atomically (temporary file, then rename).

        ``state`` defaults to the state after the last completed episode, so a checkpoint
        written after an interruption in the middle of an episode is still consistent.
        """
        assert self.out is not None
        if state is None:
            state = self._consistent if self._consistent is not None else self.checkpoint_state()
        path = self.out / CHECKPOINT_FILE
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    @property
    def completed_episodes(self) -> int:
        """Episodes fully completed (what a checkpoint written now would hold)."""
        return self._consistent["episode"] if self._consistent is not None else self.episode

    def _load_checkpoint(self, path: Path) -> None:
        try:
            s = torch.load(path, weights_only=False)
            episode = int(s["episode"])
        except Exception as exc:  # torch raises many kinds on a damaged file
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). It is probably "
                "truncated or corrupt. Delete it to restart the run from episode 0 (history.csv is "
                "then rewritten), or run without --resume into another --out folder."
            ) from None
        theirs = s.get("config", {})
        if self.requested_compile == "auto" and "compile" in theirs and theirs["compile"] != self.config.compile:
            # "auto" decides once, when the run starts: a resumed run keeps that decision
            self.config = dataclasses.replace(self.config, compile=bool(theirs["compile"]))
        mine = dataclasses.asdict(self.config)
        defaults = dataclasses.asdict(MetaConfig())
        # A setting newer than the checkpoint counts as unchanged while it keeps its default, or,
        # for LEGACY_SETTINGS, the value that matches what the code did before it existed.
        skip = ("episodes", "checkpoint_every", "threads", "workers", "data_root", "download")
        differ = []
        for k in mine:
            if k in skip:
                continue
            theirs_k = theirs.get(k, LEGACY_SETTINGS.get(k, defaults.get(k)))
            if str(theirs_k) != str(mine[k]):
                differ.append(f"{k}: {theirs_k} there, {mine[k]} now")
        if differ:
            raise CheckpointError(
                f"checkpoint {path} was written with different settings ({'; '.join(differ)}); "
                "resume with the original settings (see config.json and the values above) or use another --out folder"
            )
        if list(s.get("trials", range(self.config.trials))) != self.trial_ids:
            raise CheckpointError(
                f"checkpoint {path} holds trials {list(s.get('trials', range(self.config.trials)))}, "
                f"not {self.trial_ids}; resume it with the run (or distributed run) that wrote it"
            )
        self.episode = episode
        self.theta = s["theta"]
        if self.phi is not None:
            self.phi = s["phi"]  # present: the settings (feedback_rule) matched above
        self.adam.load_state_dict(s["adam"])
        for g, st in zip(self.task_gens, s["task_gens"]):
            g.set_state(st)
        for g, st in zip(self.weight_gens, s["weight_gens"]):
            g.set_state(st)
        if "guards" in s:
            self.guards.load_state_dict(s["guards"])
        else:  # written before the guards' state became tensors: per-trial lists
            self.guards.load_legacy(s)
        self.term_scale = s.get("term_scale", self.term_scale)

    # ------------------------------------------------------------------ one episode
    def draw(self, trials: Sequence[int], advance: bool = True) -> Episodic:
        """Fresh task, weights and feedback matrices for each listed trial, from its own generators.

        With ``advance=False`` the trials' generators are put back as they were, so the next
        :meth:`step` draws this very episode (to look at it, or to compute its meta-gradient
        by hand, before the trainer takes the step).
        """
        c = self.config
        gens = [self.task_gens[i] for i in trials] + [self.weight_gens[i] for i in trials]
        saved = None if advance else [g.get_state() for g in gens]
        try:
            eps = [self.sampler.sample(self.task_gens[i]) for i in trials]
            ep = stack_episodes(eps)
            wg = [self.weight_gens[i] for i in trials]
            Ws = init_weights(self.sizes, wg, self.dtype, c.init_scale)
            Bs = init_feedback(c.feedback, self.sizes, wg, self.dtype)
        finally:
            if saved is not None:
                for g, st in zip(gens, saved):
                    g.set_state(st)
        return Episodic(Ws, Bs, c.feedback, self.rule, ep.x_train.to(self.dtype), ep.y_train,
                        ep.x_query.to(self.dtype), ep.y_query, BETA, feedback_terms=self.feedback_terms)

    def step(self) -> list[dict]:
        """Run one meta-training episode for every live trial; returns the history rows."""
        c = self.config
        self.episode += 1
        live = self.guards.live()
        if not live:
            return []
        idx = torch.tensor(live)
        ep = self.draw(live)
        theta = self.theta[idx]
        phi = None if self.phi is None else self.phi[idx]
        mg = chunked_meta_gradient(theta, ep, c, self._pool, phi=phi)
        # theta alone, or with plastic feedback [theta | phi]: one coefficient vector from here on
        coef = self.coefficients()  # (T, R); with fixed feedback self.theta itself
        mine = theta if phi is None else torch.cat([theta, phi], dim=1)
        g = mg.grad if phi is None else torch.cat([mg.grad, mg.phi_grad], dim=1)
        active = self.active_coefficients().to(self.dtype)
        grad = (g + l1_subgradient(mine, c.lam, c.l1)) * active
        verdict = self.guards.screen(idx, mg.loss, grad, self.episode, coef, self.adam)
        notes = verdict.notes
        # (T, R): warm-up x term scaling x each trial's rollback factor
        lr_scale = warmup_factor(self.episode, c.warmup) * self.coefficient_scale() * self.guards.lr_factor[:, None]
        # One Adam over all trials; stopped trials and refused steps are simply masked out.
        full_grad = torch.zeros_like(coef)
        full_grad[idx] = grad
        full_take = torch.zeros(len(self.trial_ids), dtype=torch.bool)
        full_take[idx] = verdict.take
        coef = self.adam.step(coef, full_grad, full_take, lr_scale)
        if c.l1 == "proximal" and c.lam > 0:
            coef = l1_proximal(coef, self.adam.lr * lr_scale, c.lam, full_take[:, None] & (active > 0))
        self.guards.after_step(self.episode, idx, coef, self.adam)
        self._set_coefficients(coef)

        # measurements on the query batch with the adapted weights (and, when the feedback is
        # plastic, the adapted feedback matrices: those the errors went through at the end)
        Bs = ep.Bs if mg.Bs is None else mg.Bs
        with torch.no_grad():
            alpha = alignment_angles(mg.Ws, Bs, c.feedback, ep.x_query, ep.y_query)
            wang = weight_angles(mg.Ws, Bs, c.feedback)
            ortho = orthonormality(mg.Ws, ep.x_query)
        rows = []
        for j, i in enumerate(live):
            row: dict[str, Any] = {
                "trial": self.trial_ids[i],
                "episode": self.episode,
                "meta_loss": float(mg.loss[j]),
                "meta_accuracy": float(mg.accuracy[j]),
                "guarded": notes[j],
                "diverged": int(notes[j] == "diverged"),
            }
            for r in self.terms:
                row[f"theta_{r}"] = float(theta[j, r])
            for s in self.feedback_terms:
                row[f"phi_{s}"] = float(phi[j, s])
            for l in range(self.L - 1):
                row[f"alpha_{l + 1}"] = float(alpha[j, l])
            for l in range(self.L):
                row[f"weight_angle_{l + 1}"] = float(wang[j, l])
                row[f"ortho_{l + 1}"] = float(ortho[j, l])
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ the loop
    def run(self, progress: bool = True, stop_after: int | None = None,
            should_stop: Callable[[], bool] | None = None, client=None) -> RunSummary:
        """Meta-train until ``config.episodes`` (or ``stop_after`` more episodes, for tests).

        Checkpoints every ``checkpoint_every`` episodes and at the end. ``should_stop`` is asked
        after every episode; when it says True the run checkpoints and returns early (how a
        distributed run stops its parts). With a Dask ``client``, or ``workers`` > 1 in the
        config, each episode's trial chunks run on the workers (:func:`chunked_meta_gradient`).
        Raises :class:`DivergenceError` only if every trial diverged (results so far are kept).
        """
        c = self.config
        # one thread unless asked: a matrix product split over threads rounds differently, so a
        # fixed count makes the numbers independent of the machine's cores and of --workers
        threads_before = torch.get_num_threads()
        torch.set_num_threads(c.threads or 1)
        start = time.perf_counter()
        history: list[dict] = []
        target = c.episodes if stop_after is None else min(c.episodes, self.episode + stop_after)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.episodes, initial=self.episode, desc=f"{self.rule.name}/{c.feedback}",
                       unit="ep", dynamic_ncols=True)
        self._consistent = self.checkpoint_state()
        own_cluster = None
        if client is not None:
            self._pool = client
        elif c.workers > 1:
            from .workers import connect

            own_cluster = connect(c.workers)
            self._pool = own_cluster.__enter__()
        try:
            while self.episode < target:
                rows = self.step()
                history.extend(rows)
                if self.writer is not None:
                    self.writer.append(rows)
                self._consistent = self.checkpoint_state()
                for r in rows:
                    if r["diverged"]:
                        msg = (f"trial {r['trial']} diverged at episode {r['episode']} (non-finite meta-loss "
                               f"or meta-gradient); it is stopped, the other trials go on")
                        (bar.write if bar else print)(msg, file=sys.stderr)
                if bar is not None:
                    accs = [r["meta_accuracy"] for r in rows]
                    bar.set_postfix(acc=f"{np.mean(accs):.3f}" if accs else "-", guarded=self.guarded_steps)
                    bar.update(1)
                if self.out is not None and (self.episode % c.checkpoint_every == 0 or self.episode == target):
                    self.save_checkpoint()
                if bool(self.stopped.all()):
                    break
                if should_stop is not None and self.episode < target and should_stop():
                    if self.out is not None:
                        self.save_checkpoint()
                    break
        except BaseException:
            # Interrupted or failed (Ctrl-C, a dead worker): keep everything computed so far,
            # the state after the last completed episode, so that --resume continues from it.
            if bar is not None:
                bar.close()
            if self.out is not None:
                st = self._consistent
                self.save_checkpoint(st)
                write_theta(self.out, st["theta"].numpy(), self.terms, st["guards"]["stopped"].numpy(), seed=c.seed,
                            **self._phi_record(st.get("phi")))
            raise
        finally:
            torch.set_num_threads(threads_before)
            self._pool = None
            if own_cluster is not None:
                own_cluster.__exit__(None, None, None)
            if self.lock is not None:
                self.lock.release()
        if bar is not None:
            bar.close()
        summary = self.summary(time.perf_counter() - start, history)
        if self.out is not None:
            write_theta(self.out, self.theta.numpy(), self.terms, self.stopped.numpy(), seed=c.seed,
                        **self._phi_record(self.phi))
            self.save_checkpoint()
        if bool(self.stopped.all()):
            first = int(self.guards.diverged_at[self.stopped].min())
            raise DivergenceError(
                f"all {c.trials} trials diverged (first at episode {first}); "
                "results up to then are kept. Try a smaller --meta-lr, --warmup, or keep the default guards."
            )
        return summary

    def summary(self, seconds: float, history: list[dict]) -> RunSummary:
        """The run's :class:`RunSummary`: final meta-accuracy from ``history.csv`` when the run
        writes one (every episode, resumed ones too), else from ``history`` (this call's rows)."""
        import pandas as pd

        if self.out is not None and (self.out / "history.csv").exists():
            from .results import read_history

            df = read_history(self.out)
        else:
            df = pd.DataFrame(history)
        if len(df):
            fa = final_accuracy(df, last=10, seed=self.config.seed)
        else:
            fa = (float("nan"),) * 3
        return RunSummary(self.out, self.theta.numpy().copy(), self.terms, self.stopped.numpy().copy(), fa,
                          self.guarded_steps, self.episode, seconds, history,
                          None if self.phi is None else self.phi.numpy().copy(), self.feedback_terms)

    def _phi_record(self, phi: torch.Tensor | None) -> dict:
        """write_theta's phi arguments: none with fixed feedback (theta.json as before)."""
        if phi is None or not self.feedback_terms:
            return {}
        return {"phi": phi.numpy(), "feedback_terms": self.feedback_terms}
