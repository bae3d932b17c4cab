"""Meta-training of plasticity coefficients theta (PAPER.md, "Meta-learning").

Per episode and trial: draw a task, re-initialise W and B, train online with theta, and
take an Adam step on theta against the query cross-entropy plus lambda * ||theta||_1, with
the exact meta-gradient through the unrolled episode. T trials run as one batched
computation; trial i draws everything from generators seeded by (seed, i), so it produces
the same numbers whether it runs alone or among others.

Stability guards (all switchable, every action counted in ``history.csv``'s ``guarded``):

* ``skip-nonfinite``: a trial whose loss or meta-gradient is NaN/inf takes no step at all
  (theta and Adam's moments untouched, so one bad episode cannot poison the moments);
  after ``patience`` consecutive bad episodes the trial is declared diverged and stopped.
* ``skip-explosive`` / ``clip``: a meta-gradient whose norm exceeds ``clip`` times the median
  norm of the trial's last 20 gradients comes from an inner loop that blew up on
  that task (a huge but finite query loss). Such a gradient is not merely large: its
  direction teaches the meta-learner to silence the network (uniform outputs are the only
  safe answer to an explosion), and one of them inflates Adam's second moment and freezes
  theta for hundreds of episodes. By default (``explosive="skip"``) the step is skipped;
  after ``patience`` skips in a row the gradient is clipped to the bound instead, so a
  trial is never frozen. ``explosive="clip"`` always clips (adaptive clipping).
* rollback: after ``rollback`` non-finite episodes in a row, or explosive meta-gradients in
  ``rollback_explosive`` of the last 10 episodes (a cluster: theta has crossed into a chaotic
  region, where the guard's bound rises with the norms and the huge gradients that pass it
  inflate Adam's second moment until the trial freezes), the trial returns to a snapshot
  taken 10-20 episodes earlier with half its meta learning rate (see ``_roll_back``).
* warm-up: the meta learning rate rises linearly over the first ``warmup`` episodes (default
  20 for rules with several terms). Adam's first steps are sign-sized whatever the quality of
  the gradient (its second-moment estimate rests on a handful of samples), so without
  warm-up every coefficient of the pool moves by ~lr at once before the meta-gradient has
  any consensus; in our runs that threw most F^pool trials into a dead regime.
* term scaling: Adam moves every coordinate by about the learning rate per step, but the
  pool's terms are not in the same units: on digits, at the start of training, ||F^5|| is
  ~9x ||F^0||, the decay term F^3 ~7x, Oja's F^9 ~3x. A first step of 1e-3 on every theta_r
  then changes W far more through those terms than through the pseudo-gradient, which threw
  F^pool into a dead, chance-level regime in every trial we ran without it. With term
  scaling, theta_r's step is multiplied by c_r = min(1, ||F^0|| / ||F^r||), measured once
  per run on a probe episode (:func:`term_scales`): no term moves W faster per meta-step than
  the pseudo-gradient. Single-term rules (FA, BP) are unaffected (c_0 = 1).
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import __version__
from .data import EpisodeSampler, load_dataset, split_classes, stack_episodes
from .feedback import FEEDBACK_KINDS, init_feedback
from .learner import GRAD_MODES, Episodic, MetaGradient, meta_gradient, online_train
from .metrics import alignment_angles, orthonormality, query_loss_and_accuracy, weight_angles
from .networks import BETA, init_weights
from .results import HistoryWriter, write_config, write_json_atomic, write_theta
from .rules import DEFAULT_FEEDBACK, N_TERMS, NAMED_RULES, Rule, make_rule
from .stats import bootstrap_ci

CHECKPOINT_FILE = "checkpoint.pt"
ROLLBACK_SNAPSHOT = 10  # episodes between a trial's rollback snapshots
HIDDEN_PAPER: tuple[int, ...] = (170, 130, 100, 70)
# Default L1 strength per rule: lambda = 0 for the fixed-term rules (the paper's baselines),
# and for the pool the value found in README ("Finding lambda").
DEFAULT_LAMBDA: dict[str, float] = {"pool": 1e-3}
# Meta learning rate (Adam) per named rule, else 1e-3 (the paper's). The ten-term pool is
# stable only with a smaller one on digits: at 1e-3 its trials rise to ~60% by episode 40 and
# then most collapse to chance or diverge; at 3e-4 all 8 pilot trials kept rising (README).
DEFAULT_META_LR: dict[str, float] = {"pool": 3e-4}
# What a setting newer than a checkpoint meant before it existed (resume compares with this)
LEGACY_SETTINGS: dict[str, Any] = {"rollback_explosive": 0}


class DivergenceError(RuntimeError):
    """Every trial of a run diverged."""


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read or does not belong to this configuration."""


@dataclass
class MetaConfig:
    """Every setting of a meta-training run (written to ``config.json``)."""

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    input_scale: float | str = "auto"
    rule: str | list = "pool"
    feedback: str | None = None  # default: "bp" for rule "bp", "dfa" for "dfa", else "fa"
    hidden: tuple[int, ...] = HIDDEN_PAPER
    M: int = 5
    K: int = 50
    Q: int = 10
    remap_labels: bool = False
    test_classes: int = 0  # classes held out for meta-testing (never seen in meta-training)
    episodes: int = 600
    trials: int = 4
    lam: float | None = None  # L1 strength; None -> DEFAULT_LAMBDA.get(rule, 0)
    l1: str = "coupled"  # "coupled": lam*sign(theta) joins the meta-gradient; "proximal": see MetaTrainer.step
    meta_lr: float | None = None  # Adam's learning rate on theta; None -> DEFAULT_META_LR.get(rule, 1e-3)
    theta0: float = 1e-3
    seed: int = 0
    grad_mode: str = "adjoint"
    compile: bool = False  # torch.compile the adjoint's steps (grad_mode "adjoint" only)
    chunk: int = 4  # trials per batched inner loop (more are run chunk by chunk; see _meta_gradient)
    clip: float | None = 10.0
    explosive: str = "skip"  # what to do with a meta-gradient above clip x recent median: "skip" or "clip"
    warmup: int | None = None  # None -> 20 episodes for rules with several terms, 0 for one term
    skip_nonfinite: bool = True
    patience: int = 10
    rollback: int = 3  # non-finite episodes in a row before a trial rolls back (0: never; see step)
    max_rollbacks: int = 3  # per trial; after that, patience decides
    rollback_explosive: int = 5  # explosive meta-gradients among the last 10 episodes that trigger a rollback (0: never)
    term_scaling: bool = True
    checkpoint_every: int = 25
    dtype: str = "float32"
    threads: int | None = None
    workers: int = 1  # processes computing meta-gradients of separate trial chunks (see _meta_gradient)

    def resolved(self) -> "MetaConfig":
        """A copy with defaults filled in and every setting validated (raises ValueError)."""
        c = dataclasses.replace(self)
        rule_key = c.rule.strip().lower() if isinstance(c.rule, str) else None
        if c.feedback is None:
            c.feedback = DEFAULT_FEEDBACK.get(rule_key, "fa")
        if c.feedback not in FEEDBACK_KINDS:
            raise ValueError(f"feedback must be one of {', '.join(FEEDBACK_KINDS)}, got {c.feedback!r}")
        if c.lam is None:
            c.lam = DEFAULT_LAMBDA.get(rule_key, 0.0)
        if c.meta_lr is None:
            c.meta_lr = DEFAULT_META_LR.get(rule_key, 1e-3)
        if c.warmup is None:
            c.warmup = 20 if len(make_rule(c.rule, len(c.hidden) + 1).terms) > 1 else 0
        checks = [
            (c.episodes >= 1, f"episodes must be >= 1, got {c.episodes}"),
            (c.trials >= 1, f"trials must be >= 1, got {c.trials}"),
            (c.lam >= 0, f"lambda (L1 strength) must be >= 0, got {c.lam}"),
            (c.l1 in ("coupled", "proximal"), f"l1 must be 'coupled' or 'proximal', got {c.l1!r}"),
            (c.meta_lr > 0, f"meta learning rate must be > 0, got {c.meta_lr}"),
            (c.grad_mode in GRAD_MODES, f"grad mode must be one of {', '.join(GRAD_MODES)}, got {c.grad_mode!r}"),
            (not c.compile or c.grad_mode == "adjoint", "compile works with grad mode 'adjoint' only"),
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
        c.hidden = tuple(int(h) for h in c.hidden)
        make_rule(c.rule, len(c.hidden) + 1)  # validates the rule spec
        return c


def _git_commit() -> str | None:
    """The commit of the labkit checkout, when it is a git checkout (for config.json)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def trial_generators(seed: int, trial: int) -> tuple[torch.Generator, torch.Generator]:
    """(task generator, weight generator) of trial ``trial``, derived from (seed, trial) only."""
    a, b = np.random.SeedSequence([int(seed), int(trial)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(a) >> 1), torch.Generator().manual_seed(int(b) >> 1)


class MaskedAdam:
    """Adam over a (T, R) tensor, element by element, with a per-trial "take this step" mask.

    Identical to ``torch.optim.Adam`` (no weight decay, no amsgrad) for the trials that
    step; a masked trial's parameters, moments and step count stay untouched.
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


@dataclass
class RunSummary:
    """What a finished (or interrupted) run reports."""

    out: Path | None
    theta: np.ndarray  # (T, 10)
    terms: tuple[int, ...]
    diverged: np.ndarray  # (T,) bool
    final_accuracy: tuple[float, float, float]  # mean, low, high over trials (last 10 episodes)
    guarded_steps: int
    episodes_done: int
    seconds: float
    history: list[dict] = field(default_factory=list)

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
        if self.out is not None:
            lines.append(f"results in {self.out}")
        return "\n".join(lines)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_meta_gradient(theta: torch.Tensor, ep: Episodic, grad_mode: str, compile: bool) -> MetaGradient:
    return meta_gradient(theta, ep, grad_mode, compile=compile)


def worker_pool(workers: int, threads: int | None = None):
    """A pool of ``workers`` processes for :func:`_meta_gradient`, each with ``threads``
    torch threads (default: the usable cores shared out, at least 1)."""
    import concurrent.futures
    import multiprocessing

    if threads is None:
        threads = max(1, len(os.sched_getaffinity(0)) // workers) if hasattr(os, "sched_getaffinity") else 1
    # spawn, not fork: a forked child of a process whose OpenMP threads already ran can hang.
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    )


def _meta_gradient(theta: torch.Tensor, ep: Episodic, c: MetaConfig, pool=None):
    """The meta-gradient of T trials, computed ``c.chunk`` trials at a time.

    Trials are independent, so chunking changes no number (tested); it changes speed: the
    inner loop streams every trial's weights through the cache at every step, and past a few
    trials they no longer fit (benchmarks/: 4 trials per batch is fastest on a 2-core CPU).
    With a ``pool`` of ``c.workers`` processes (:func:`worker_pool`), the chunks (a multiple
    of the workers, equal in size) run in parallel, one process per core: many small
    operations per plasticity step scale poorly over threads inside one process, but two
    processes on two cores run at twice the speed of one.
    """
    T = theta.shape[0]
    if pool is None:
        if T <= c.chunk:
            return meta_gradient(theta, ep, c.grad_mode, compile=c.compile)
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
        subs.append((cut(theta), sub))
    if pool is None:
        parts = [meta_gradient(th, sub, c.grad_mode, compile=c.compile) for th, sub in subs]
    else:
        from concurrent.futures.process import BrokenProcessPool

        try:
            futures = [pool.submit(_worker_meta_gradient, th, sub, c.grad_mode, c.compile) for th, sub in subs]
            parts = [f.result() for f in futures]
        except BrokenProcessPool as err:
            raise RuntimeError(
                "a worker process stopped unexpectedly (out of memory, or killed); the results up to "
                "the last completed episode are kept: continue with --resume, with fewer --workers "
                "(or 1) if it happens again"
            ) from err
    return MetaGradient(
        torch.cat([p.loss for p in parts]), torch.cat([p.accuracy for p in parts]),
        torch.cat([p.grad for p in parts]), [torch.cat(ws) for ws in zip(*(p.Ws for p in parts))],
    )


class MetaTrainer:
    """Meta-trains theta for T batched trials; writes results and checkpoints to ``out``.

    Usage::

        trainer = MetaTrainer(MetaConfig(rule="bio", episodes=50), out="runs/bio")
        summary = trainer.run()
    """

    def __init__(self, config: MetaConfig, out: str | os.PathLike | None = None, resume: bool = False):
        self.config = c = config.resolved()
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
        T = c.trials
        self.term_scale = torch.ones(N_TERMS, dtype=self.dtype)
        if c.term_scaling and len(self.terms) > 1:
            self.term_scale = term_scales(self.sampler, self.sizes, c.feedback, c.theta0, c.seed).to(self.dtype)
        self.theta = torch.zeros(T, N_TERMS, dtype=self.dtype)
        self.theta[:, 0] = c.theta0
        self.adam = MaskedAdam((T, N_TERMS), c.meta_lr, dtype=self.dtype)
        gens = [trial_generators(c.seed, i) for i in range(T)]
        self.task_gens = [g[0] for g in gens]
        self.weight_gens = [g[1] for g in gens]
        self.stopped = torch.zeros(T, dtype=torch.bool)
        self.bad_streak = torch.zeros(T, dtype=torch.long)
        self.explosive_streak = [0] * T
        self.explosive_recent: list[list[int]] = [[] for _ in range(T)]  # 1 per explosive episode, last 10
        # rollback (see step): per trial, its meta learning rate factor, rollbacks so far, and
        # two snapshots of (theta, Adam's v and t, the guard's norm history) taken every
        # ROLLBACK_SNAPSHOT episodes
        self.lr_factor = torch.ones(T, dtype=self.dtype)
        self.rollbacks = [0] * T
        self.snapshots: list[list[tuple]] = [[] for _ in range(T)]
        self.norm_history: list[list[float]] = [[] for _ in range(T)]
        self.episode = 0
        self.guarded_steps = 0
        self.diverged_at: dict[int, int] = {}
        self.out = Path(out) if out is not None else None
        self._consistent: dict | None = None
        self._pool = None  # worker processes while run() runs with workers > 1
        self.writer: HistoryWriter | None = None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt = self.out / CHECKPOINT_FILE
            if resume and ckpt.exists():
                self._load_checkpoint(ckpt)
            elif not resume and (self.out / "history.csv").exists():
                raise FileExistsError(
                    f"{self.out} already holds a run (history.csv); pass --resume to continue it, "
                    "or choose another --out folder"
                )
            self.writer = HistoryWriter(self.out, self.L, truncate_after_episode=self.episode)
            write_config(self.out, self.config_record())

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
            },
        )
        return d

    def _checkpoint_state(self) -> dict:
        """A deep copy of everything a resumed run needs (taken between episodes only)."""
        return {
            "episode": self.episode,
            "theta": self.theta.clone(),
            "adam": {k: v.clone() for k, v in self.adam.state_dict().items()},
            "task_gens": [g.get_state() for g in self.task_gens],
            "weight_gens": [g.get_state() for g in self.weight_gens],
            "stopped": self.stopped.clone(),
            "bad_streak": self.bad_streak.clone(),
            "explosive_streak": list(self.explosive_streak),
            "explosive_recent": [list(r) for r in self.explosive_recent],
            "lr_factor": self.lr_factor.clone(),
            "rollbacks": list(self.rollbacks),
            "snapshots": [[tuple(x.clone() for x in snap) for snap in snaps] for snaps in self.snapshots],
            "norm_history": [list(h) for h in self.norm_history],
            "guarded_steps": self.guarded_steps,
            "diverged_at": dict(self.diverged_at),
            "term_scale": self.term_scale.clone(),
            "config": dataclasses.asdict(self.config),
        }

    def save_checkpoint(self, state: dict | None = None) -> Path:
        """Write ``checkpoint.pt`` atomically (temporary file, then rename).

        ``state`` defaults to the state after the last completed episode, so a checkpoint
        written after an interruption in the middle of an episode is still consistent.
        """
        assert self.out is not None
        if state is None:
            state = self._consistent if self._consistent is not None else self._checkpoint_state()
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
        mine = dataclasses.asdict(self.config)
        theirs = s.get("config", {})
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
        self.episode = episode
        self.theta = s["theta"]
        self.adam.load_state_dict(s["adam"])
        for g, st in zip(self.task_gens, s["task_gens"]):
            g.set_state(st)
        for g, st in zip(self.weight_gens, s["weight_gens"]):
            g.set_state(st)
        self.stopped = s["stopped"]
        self.bad_streak = s["bad_streak"]
        self.explosive_streak = s.get("explosive_streak", self.explosive_streak)
        self.explosive_recent = s.get("explosive_recent", self.explosive_recent)
        self.lr_factor = s.get("lr_factor", self.lr_factor)
        self.rollbacks = s.get("rollbacks", self.rollbacks)
        self.snapshots = s.get("snapshots", self.snapshots)
        self.norm_history = s["norm_history"]
        self.guarded_steps = s["guarded_steps"]
        self.diverged_at = s["diverged_at"]
        self.term_scale = s.get("term_scale", self.term_scale)

    # ------------------------------------------------------------------ one episode
    def draw(self, trials: Sequence[int]) -> Episodic:
        """Fresh task, weights and feedback for each listed trial, from its own generators."""
        c = self.config
        eps = [self.sampler.sample(self.task_gens[i]) for i in trials]
        ep = stack_episodes(eps)
        wg = [self.weight_gens[i] for i in trials]
        Ws = init_weights(self.sizes, wg, self.dtype)
        Bs = init_feedback(c.feedback, self.sizes, wg, self.dtype)
        return Episodic(Ws, Bs, c.feedback, self.rule, ep.x_train.to(self.dtype), ep.y_train,
                        ep.x_query.to(self.dtype), ep.y_query, BETA)

    def step(self) -> list[dict]:
        """Run one meta-training episode for every live trial; returns the history rows."""
        c = self.config
        self.episode += 1
        live = [i for i in range(c.trials) if not self.stopped[i]]
        if not live:
            return []
        idx = torch.tensor(live)
        ep = self.draw(live)
        theta = self.theta[idx]
        mg = _meta_gradient(theta, ep, c, self._pool)
        active = self.active.to(self.dtype)
        l1_grad = c.lam * torch.sign(theta) if c.l1 == "coupled" else 0.0
        grad = (mg.grad + l1_grad) * active
        finite = torch.isfinite(mg.loss) & torch.isfinite(grad).all(-1)
        notes = [""] * len(live)
        take = torch.ones(len(live), dtype=torch.bool)
        # guard: non-finite
        for j, i in enumerate(live):
            if bool(finite[j]):
                self.bad_streak[i] = 0
                continue
            take[j] = False
            grad[j] = 0.0
            self.bad_streak[i] += 1
            if (c.skip_nonfinite and c.rollback and self.bad_streak[i] >= c.rollback
                    and self.rollbacks[i] < c.max_rollbacks):
                self._roll_back(i)
                notes[j] = "rollback"
                self.guarded_steps += 1
            elif c.skip_nonfinite and self.bad_streak[i] < c.patience:
                notes[j] = "skip-nonfinite"
                self.guarded_steps += 1
            else:
                self.stopped[i] = True
                self.diverged_at[i] = self.episode
                notes[j] = "diverged"
        # guard: explosive meta-gradients, judged against the trial's recent gradient norms
        if c.clip is not None:
            norms = grad.norm(dim=-1)
            for j, i in enumerate(live):
                if not take[j]:
                    continue
                hist = self.norm_history[i]
                n = float(norms[j])
                # Every norm enters the history, skipped ones too: the median of the last 20
                # ignores isolated spikes but follows a lasting change of scale (with accepted
                # norms only, the bound ratchets down and a trial ends up skipping every step).
                bound = c.clip * float(np.median(hist)) if len(hist) >= 5 else math.inf
                hist.append(n)
                del hist[:-20]
                recent = self.explosive_recent[i]
                recent.append(int(n > bound))
                del recent[:-ROLLBACK_SNAPSHOT]
                if (c.rollback_explosive and sum(recent) >= c.rollback_explosive
                        and self.rollbacks[i] < c.max_rollbacks):
                    # a cluster of explosions: theta has crossed into a chaotic region (Stability, 8)
                    self._roll_back(i)
                    take[j] = False
                    notes[j] = "rollback"
                    self.guarded_steps += 1
                    continue
                if n > bound:
                    self.guarded_steps += 1
                    if c.explosive == "skip" and self.explosive_streak[i] < c.patience:
                        take[j] = False
                        notes[j] = "skip-explosive"
                        self.explosive_streak[i] += 1
                        continue
                    grad[j] *= bound / n
                    notes[j] = "clip"
                self.explosive_streak[i] = 0
        # (T, R): warm-up x term scaling x each trial's rollback factor
        lr_scale = (min(1.0, self.episode / c.warmup) if c.warmup else 1.0) * self.term_scale * self.lr_factor[:, None]
        # One Adam over all trials; stopped trials and refused steps are simply masked out.
        full_grad = torch.zeros_like(self.theta)
        full_grad[idx] = grad
        full_take = torch.zeros(c.trials, dtype=torch.bool)
        full_take[idx] = take
        self.theta = self.adam.step(self.theta, full_grad, full_take, lr_scale)
        if c.l1 == "proximal" and c.lam > 0:
            # Decoupled (proximal) L1: after Adam's step, move each coefficient towards 0 by
            # lam x its own step size, stopping at 0 (soft thresholding). Adam divides the
            # meta-gradient by its running scale, and near good rules that scale is 1e1-1e5
            # (steep, chaotic inner loops), so a penalty added to the gradient (coupled) is
            # lost in it; here lam is in units of Adam's normalised step: a term survives only
            # if its meta-gradient pushes it away from 0 more consistently than lam.
            shrink = self.adam.lr * lr_scale * c.lam  # (T, R), each coordinate's own step size
            moved = torch.sign(self.theta) * torch.clamp(self.theta.abs() - shrink, min=0.0)
            self.theta = torch.where(full_take[:, None] & (active > 0), moved, self.theta)

        if (c.rollback or c.rollback_explosive) and self.episode % ROLLBACK_SNAPSHOT == 0:
            for i in live:
                calm = not c.rollback_explosive or 2 * sum(self.explosive_recent[i]) < c.rollback_explosive
                if self.bad_streak[i] == 0 and calm:
                    snap = (self.theta[i].clone(), self.adam.v[i].clone(), self.adam.t[i].clone(),
                            torch.tensor(self.norm_history[i], dtype=torch.float64))
                    self.snapshots[i] = (self.snapshots[i] + [snap])[-2:]

        # measurements on the query batch with the adapted weights
        with torch.no_grad():
            alpha = alignment_angles(mg.Ws, ep.Bs, c.feedback, ep.x_query, ep.y_query)
            wang = weight_angles(mg.Ws, ep.Bs, c.feedback)
            ortho = orthonormality(mg.Ws, ep.x_query)
        rows = []
        for j, i in enumerate(live):
            row: dict[str, Any] = {
                "trial": i,
                "episode": self.episode,
                "meta_loss": float(mg.loss[j]),
                "meta_accuracy": float(mg.accuracy[j]),
                "guarded": notes[j],
                "diverged": int(notes[j] == "diverged"),
            }
            for r in self.terms:
                row[f"theta_{r}"] = float(theta[j, r])
            for l in range(self.L - 1):
                row[f"alpha_{l + 1}"] = float(alpha[j, l])
            for l in range(self.L):
                row[f"weight_angle_{l + 1}"] = float(wang[j, l])
                row[f"ortho_{l + 1}"] = float(ortho[j, l])
            rows.append(row)
        return rows

    def _roll_back(self, i: int) -> None:
        """Trial i's inner loop has overflowed ``rollback`` episodes in a row at a theta that
        the skips keep frozen, or exploded in ``rollback_explosive`` of its last 10 episodes:
        undo the steps that led there. theta, Adam's second moment and the explosive guard's
        norm history go back to the older of the trial's two snapshots (10-20 episodes back,
        taken after calm episodes only; the initial theta if none), Adam's first moment is
        zeroed (it points the way into the bad region), and the trial's meta learning rate is
        halved, as a trust region shrinks after a rejected step."""
        snaps = self.snapshots[i]
        norms = None
        if snaps:
            theta, v, t, *rest = snaps[0]  # snapshots from before explosive rollbacks have no norms
            norms = rest[0] if rest else None
        else:
            theta = torch.zeros(N_TERMS, dtype=self.dtype)
            theta[0] = self.config.theta0
            v, t = torch.zeros_like(theta), torch.tensor(0)
        self.theta[i] = theta
        self.adam.m[i] = 0.0
        self.adam.v[i] = v
        self.adam.t[i] = t
        if norms is not None:  # the guard's bound, too, goes back to its calm scale
            self.norm_history[i] = [float(x) for x in norms]
        self.snapshots[i] = [tuple(x.clone() for x in snaps[0])] if snaps else []
        self.lr_factor[i] *= 0.5
        self.rollbacks[i] += 1
        self.bad_streak[i] = 0
        self.explosive_recent[i] = []
        self.explosive_streak[i] = 0

    # ------------------------------------------------------------------ the loop
    def run(self, progress: bool = True, stop_after: int | None = None) -> RunSummary:
        """Meta-train until ``config.episodes`` (or ``stop_after`` more episodes, for tests).

        Checkpoints every ``checkpoint_every`` episodes and at the end. Raises
        :class:`DivergenceError` only if every trial diverged (results so far are kept).
        """
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        start = time.perf_counter()
        history: list[dict] = []
        target = c.episodes if stop_after is None else min(c.episodes, self.episode + stop_after)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.episodes, initial=self.episode, desc=f"{self.rule.name}/{c.feedback}",
                       unit="ep", dynamic_ncols=True)
        self._consistent = self._checkpoint_state()
        if c.workers > 1:
            self._pool = worker_pool(c.workers, c.threads)
        try:
            while self.episode < target:
                rows = self.step()
                history.extend(rows)
                if self.writer is not None:
                    self.writer.append(rows)
                self._consistent = self._checkpoint_state()
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
        except BaseException:
            # Interrupted or failed (Ctrl-C, a dead worker): keep everything computed so far,
            # the state after the last completed episode, so that --resume continues from it.
            if bar is not None:
                bar.close()
            if self.out is not None:
                st = self._consistent
                self.save_checkpoint(st)
                write_theta(self.out, st["theta"].numpy(), self.terms, st["stopped"].numpy(), seed=c.seed)
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None
        if bar is not None:
            bar.close()
        summary = self.summary(time.perf_counter() - start, history)
        if self.out is not None:
            write_theta(self.out, self.theta.numpy(), self.terms, self.stopped.numpy(), seed=c.seed)
            self.save_checkpoint()
        if bool(self.stopped.all()):
            raise DivergenceError(
                f"all {c.trials} trials diverged (first at episode {min(self.diverged_at.values())}); "
                "results up to then are kept. Try a smaller --meta-lr, --warmup, or keep the default guards."
            )
        return summary

    def summary(self, seconds: float, history: list[dict]) -> RunSummary:
        accs = {}
        for r in history:
            accs.setdefault(r["trial"], []).append(r["meta_accuracy"])
        if self.out is not None and (self.out / "history.csv").exists():
            from .results import read_history

            df = read_history(self.out)
            accs = {int(t): g.sort_values("episode")["meta_accuracy"].tolist() for t, g in df.groupby("trial")}
        finals = np.array([np.mean(v[-10:]) for t, v in sorted(accs.items()) if not self.stopped[t]])
        if len(finals):
            mean, lo, hi = bootstrap_ci(finals, seed=self.config.seed)
            fa = (float(mean), float(lo), float(hi))
        else:
            fa = (math.nan, math.nan, math.nan)
        return RunSummary(self.out, self.theta.numpy().copy(), self.terms, self.stopped.numpy().copy(), fa,
                          self.guarded_steps, self.episode, seconds, history)


@torch.no_grad()
def term_scales(
    sampler: EpisodeSampler, sizes: Sequence[int], feedback: str, theta0: float, seed: int, every: int = 10
) -> torch.Tensor:
    """Per-term meta-step multipliers c_r = min(1, ||F^0|| / ||F^r||), shape (10,).

    Measured on one probe episode (its own generator, derived from ``seed``, so no trial's
    random stream is touched): a fresh network learns online with the pseudo-gradient at
    learning rate ``theta0``; every ``every`` samples and in every layer the ratio of each
    term's Frobenius norm to F^0's is recorded; c_r uses the geometric mean of the ratios.
    """
    from .feedback import backward
    from .networks import forward
    from .rules import fused_update, pool_term

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


def load_theta_from_results(folder: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(final theta (T, 10), config) of a results folder; diverged trials dropped."""
    from .results import read_config, read_theta

    cfg = read_config(folder)
    th = read_theta(folder)
    full = np.zeros((len(th["per_trial"]), N_TERMS))
    for row_i, row in enumerate(th["per_trial"]):
        for r, v in zip(th["terms"], row):
            full[row_i, r] = v
    keep = ~np.array(th["diverged"], dtype=bool)
    return full[keep], cfg


@torch.no_grad()
def evaluate_rule(
    rule: str | list,
    theta: np.ndarray | Sequence[float],
    feedback: str | None = None,
    dataset: str = "digits",
    data_root: str | None = None,
    hidden: Sequence[int] = HIDDEN_PAPER,
    M: int = 5,
    K: int = 50,
    Q: int = 10,
    tasks: int = 50,
    seed: int = 1000,
    test_classes: int = 0,
    input_scale: float | str = "auto",
    classes_seed: int = 0,
) -> np.ndarray:
    """Query accuracy of fresh networks trained online with a fixed rule on new tasks.

    ``theta`` is one (10,) vector used for every task, or (n, 10): task k uses row k mod n
    (e.g. one row per meta-trained trial). Returns (tasks,) accuracies. With
    ``test_classes`` > 0 the tasks use only the held-out meta-test classes of the same split
    as :class:`MetaTrainer` with seed ``classes_seed``.
    """
    th = torch.as_tensor(np.atleast_2d(np.asarray(theta, dtype=np.float64)), dtype=torch.float32)
    if th.shape[1] != N_TERMS:
        raise ValueError(f"theta needs {N_TERMS} entries (zeros for unused terms), got {th.shape[1]}")
    key = rule.strip().lower() if isinstance(rule, str) else None
    feedback = feedback or DEFAULT_FEEDBACK.get(key, "fa")
    ds = load_dataset(dataset, data_root, False, "train", input_scale)
    classes = split_classes(ds.n_classes, test_classes, classes_seed)[1] if test_classes else None
    sampler = EpisodeSampler(ds, M, K, Q, classes=classes)
    sizes = (ds.images.shape[1], *hidden, sampler.n_outputs)
    r = make_rule(rule, len(sizes) - 1)
    gens = [trial_generators(seed, k) for k in range(tasks)]
    accs = []
    batch = 16
    for start in range(0, tasks, batch):
        ks = list(range(start, min(tasks, start + batch)))
        ep = stack_episodes([sampler.sample(gens[k][0]) for k in ks])
        wg = [gens[k][1] for k in ks]
        Ws = init_weights(sizes, wg)
        Bs = init_feedback(feedback, sizes, wg)
        Ws = online_train(Ws, Bs, feedback, r, th[torch.tensor(ks) % th.shape[0]], ep.x_train, ep.y_train)
        _, acc = query_loss_and_accuracy(Ws, ep.x_query, ep.y_query)
        accs.append(acc)
    return torch.cat(accs).numpy()
