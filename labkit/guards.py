"""Stability guards of meta-training: what happens to a trial whose meta-step looks wrong.

Every action is counted (``guarded_steps``) and named in ``history.csv``'s ``guarded``
column. All are switchable (the settings of :class:`labkit.meta.MetaConfig` of the same
names); docs/architecture.md tells the story.

* ``skip-nonfinite``: a trial whose loss or meta-gradient is NaN/inf takes no step at all
  (theta and Adam's moments untouched, so one bad episode cannot poison the moments);
  after ``patience`` consecutive bad episodes the trial is declared ``diverged`` and stopped.
* ``skip-explosive`` / ``clip``: a meta-gradient whose norm exceeds ``clip`` times the median
  norm of the trial's last 20 meta-gradients (once it has 5) comes from an inner loop that
  blew up on that task (a huge but finite query loss). Its direction teaches the
  meta-learner to silence the network, and one of them inflates Adam's second moment and
  freezes theta for hundreds of episodes. With ``explosive="skip"`` the step is skipped;
  after ``patience`` skips in a row the gradient is clipped to the bound instead, so a trial
  is never frozen. ``explosive="clip"`` always clips (adaptive clipping). Every norm enters
  the history, skipped ones too: the median ignores isolated spikes but follows a lasting
  change of scale (with accepted norms only, the bound ratchets down and a trial ends up
  skipping every step).
* ``rollback``: after ``rollback`` non-finite episodes in a row, or explosive meta-gradients
  in ``rollback_explosive`` of the last 10 episodes (a cluster: theta has crossed into a
  chaotic region, where the bound rises with the norms and the huge gradients that pass it
  inflate Adam's second moment until the trial freezes), the trial returns to a snapshot
  taken 10-20 episodes earlier with half its meta learning rate (:meth:`Guards.roll_back`),
  at most ``max_rollbacks`` times; then ``patience`` decides.

The per-trial state is a set of tensors over the trial axis (``T`` = trials): streak
counters ``(T,)``, the last 10 explosive flags ``(T, 10)``, the last 20 meta-gradient norms
as a window ``(T, 20)`` in float64 with a count ``(T,)``, two rollback snapshots per trial
``(T, 2, ...)``. This module knows nothing of the trainer: it is handed the trials' theta
and an Adam-like object (attributes ``m``, ``v`` (T, R) and ``t`` (T,)) to roll back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .terms import N_TERMS

__all__ = ["Guards", "Screening", "ROLLBACK_SNAPSHOT", "NORM_WINDOW", "MIN_NORMS", "SNAPSHOTS", "window_median"]

ROLLBACK_SNAPSHOT = 10  # episodes between a trial's rollback snapshots, and the window of explosive flags
NORM_WINDOW = 20  # meta-gradient norms per trial that the explosive bound's median reads
MIN_NORMS = 5  # norms a trial needs before the explosive bound applies
SNAPSHOTS = 2  # rollback snapshots kept per trial (a rollback returns to the older one)

# the state tensors, in the order state_dict writes them
_STATE = ("stopped", "diverged_at", "bad_streak", "explosive_streak", "explosive_recent", "norms", "norm_count",
          "lr_factor", "rollbacks", "snap_theta", "snap_v", "snap_t", "snap_norms", "snap_norm_count", "n_snapshots")


@dataclass
class Screening:
    """What the guards decided for the live trials of one episode: ``take`` (n,) bool, whether
    the trial takes its Adam step; ``notes``, the ``guarded`` entry of each trial's history row."""

    take: torch.Tensor
    notes: list[str]


def window_median(values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per row, the median of the last ``count`` entries of ``values`` (rows, W) (float64).

    Exactly ``np.median`` of the same values: the middle value for an odd count, the mean
    of the two middle values for an even one, NaN if one of them is NaN (or the count is 0).
    """
    rows, width = values.shape
    valid = torch.arange(width) >= (width - count)[:, None]
    x = torch.where(valid, values, torch.full_like(values, math.inf))
    s = x.sort(dim=1).values
    lo = s.gather(1, ((count - 1) // 2).clamp(min=0)[:, None])[:, 0]
    hi = s.gather(1, (count // 2).clamp(max=width - 1)[:, None])[:, 0]
    med = torch.where(count % 2 == 1, lo, (lo + hi) / 2)
    bad = (torch.isnan(x) & valid).any(1) | (count == 0)
    return torch.where(bad, torch.full_like(med, math.nan), med)


def _push(window: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """Append ``values`` to the rows ``rows`` of a window kept newest-last (the oldest drops out)."""
    window[rows] = torch.cat([window[rows, 1:], values[:, None].to(window.dtype)], dim=1)


class Guards:
    """The guards' settings and per-trial state for T trials (see the module docstring).

    ``theta0``: the initial coefficient of term 0 (a rollback without snapshot returns to
    the initial theta); ``dtype``: that of theta and Adam's moments.
    """

    def __init__(
        self,
        trials: int,
        *,
        clip: float | None = 10.0,
        explosive: str = "skip",
        skip_nonfinite: bool = True,
        patience: int = 10,
        rollback: int = 3,
        max_rollbacks: int = 3,
        rollback_explosive: int = 5,
        theta0: float = 1e-3,
        n_terms: int = N_TERMS,
        dtype: torch.dtype = torch.float32,
    ):
        self.trials, self.n_terms, self.dtype = trials, n_terms, dtype
        self.clip, self.explosive, self.skip_nonfinite, self.patience = clip, explosive, skip_nonfinite, patience
        self.rollback, self.max_rollbacks, self.rollback_explosive = rollback, max_rollbacks, rollback_explosive
        self.theta0 = theta0
        T, R, K = trials, n_terms, SNAPSHOTS
        long = dict(dtype=torch.long)
        self.stopped = torch.zeros(T, dtype=torch.bool)
        self.diverged_at = torch.zeros(T, **long)  # episode of divergence, 0 while running
        self.bad_streak = torch.zeros(T, **long)  # non-finite episodes in a row
        self.explosive_streak = torch.zeros(T, **long)  # explosive steps skipped in a row
        self.explosive_recent = torch.zeros(T, ROLLBACK_SNAPSHOT, **long)  # 1 per explosive episode, newest last
        self.norms = torch.zeros(T, NORM_WINDOW, dtype=torch.float64)  # last meta-gradient norms, newest last
        self.norm_count = torch.zeros(T, **long)  # how many of them are filled
        self.lr_factor = torch.ones(T, dtype=dtype)  # meta learning rate factor, halved per rollback
        self.rollbacks = torch.zeros(T, **long)
        # snapshots of (theta, Adam's v and t, the norm window) every ROLLBACK_SNAPSHOT episodes;
        # slot 0 the older; snap_norm_count -1: taken without norms (a checkpoint of older code)
        self.snap_theta = torch.zeros(T, K, R, dtype=dtype)
        self.snap_v = torch.zeros(T, K, R, dtype=dtype)
        self.snap_t = torch.zeros(T, K, **long)
        self.snap_norms = torch.zeros(T, K, NORM_WINDOW, dtype=torch.float64)
        self.snap_norm_count = torch.zeros(T, K, **long)
        self.n_snapshots = torch.zeros(T, **long)
        self.guarded_steps = 0

    @classmethod
    def from_config(cls, config: Any, n_terms: int = N_TERMS, dtype: torch.dtype = torch.float32,
                    trials: int | None = None) -> "Guards":
        """Guards with the settings of the same names of ``config`` (a resolved
        :class:`labkit.meta.MetaConfig`, or any object with those attributes)."""
        return cls(config.trials if trials is None else trials, clip=config.clip, explosive=config.explosive, skip_nonfinite=config.skip_nonfinite,
                   patience=config.patience, rollback=config.rollback, max_rollbacks=config.max_rollbacks,
                   rollback_explosive=config.rollback_explosive, theta0=config.theta0, n_terms=n_terms, dtype=dtype)

    # ------------------------------------------------------------------ reading
    def live(self) -> list[int]:
        """The trials still running."""
        return [i for i in range(self.trials) if not self.stopped[i]]

    def norm_history(self, trial: int) -> list[float]:
        """Trial ``trial``'s recent meta-gradient norms, oldest first (at most 20)."""
        n = int(self.norm_count[trial])
        return [float(x) for x in self.norms[trial, NORM_WINDOW - n:]] if n else []

    def explosive_bound(self, trials: torch.Tensor) -> torch.Tensor:
        """(n,) float64: ``clip`` x the median of each listed trial's recent norms, inf while
        it has fewer than 5 (or when clipping is off)."""
        if self.clip is None:
            return torch.full((len(trials),), math.inf, dtype=torch.float64)
        count = self.norm_count[trials]
        med = window_median(self.norms[trials], count)
        return torch.where(count >= MIN_NORMS, self.clip * med, torch.full_like(med, math.inf))

    # ------------------------------------------------------------------ one episode
    def screen(self, idx: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, episode: int,
               theta: torch.Tensor, adam: Any) -> Screening:
        """Judge the meta-step of the live trials ``idx`` (n,) from their ``loss`` (n,) and
        meta-gradient ``grad`` (n, R) at ``episode``.

        ``grad`` is changed in place (zeroed where non-finite, scaled where clipped); trials
        that roll back get their theta (a row of ``theta`` (T, R), changed in place) and
        Adam state back from a snapshot. Diverged trials are marked stopped.
        """
        n = len(idx)
        notes = [""] * n
        finite = torch.isfinite(loss) & torch.isfinite(grad).all(-1)
        take = finite.clone()
        bad = ~finite
        no = torch.zeros(n, dtype=torch.bool)
        # guard: non-finite
        if bool(bad.any()):
            grad[bad] = 0.0
        streak = torch.where(finite, torch.zeros_like(self.bad_streak[idx]), self.bad_streak[idx] + 1)
        self.bad_streak[idx] = streak
        if self.skip_nonfinite and self.rollback:
            back = bad & (streak >= self.rollback) & (self.rollbacks[idx] < self.max_rollbacks)
        else:
            back = no
        skip = bad & ~back & (streak < self.patience) if self.skip_nonfinite else no
        dead = bad & ~back & ~skip
        self.roll_back(idx[back], theta, adam)
        self.stopped[idx[dead]] = True
        self.diverged_at[idx[dead]] = episode
        self.guarded_steps += int(back.sum()) + int(skip.sum())
        for mask, note in ((back, "rollback"), (skip, "skip-nonfinite"), (dead, "diverged")):
            for j in mask.nonzero().flatten().tolist():
                notes[j] = note
        # guard: explosive meta-gradients, judged against the trial's recent gradient norms
        if self.clip is not None:
            norms = grad.norm(dim=-1)
            pos = take.nonzero().flatten()
            tr = idx[pos]
            size = norms[pos].to(torch.float64)
            bound = self.explosive_bound(tr)  # from the norms before this one
            _push(self.norms, tr, size)
            self.norm_count[tr] = (self.norm_count[tr] + 1).clamp(max=NORM_WINDOW)
            flag = size > bound
            _push(self.explosive_recent, tr, flag)
            m = len(tr)
            if self.rollback_explosive:
                # a cluster of explosions: theta has crossed into a chaotic region
                cluster = (self.explosive_recent[tr].sum(1) >= self.rollback_explosive) & (
                    self.rollbacks[tr] < self.max_rollbacks)
            else:
                cluster = torch.zeros(m, dtype=torch.bool)
            self.roll_back(tr[cluster], theta, adam)
            explosive = flag & ~cluster
            if self.explosive == "skip":
                skipped = explosive & (self.explosive_streak[tr] < self.patience)
            else:
                skipped = torch.zeros(m, dtype=torch.bool)
            clipped = explosive & ~skipped
            self.guarded_steps += int(cluster.sum()) + int(explosive.sum())
            take[pos[cluster | skipped]] = False
            self.explosive_streak[tr[skipped]] += 1
            self.explosive_streak[tr[~cluster & ~skipped]] = 0
            for k in clipped.nonzero().flatten().tolist():
                j = int(pos[k])
                grad[j] *= float(bound[k]) / float(size[k])  # Python floats: the step's exact scale
                notes[j] = "clip"
            for mask, note in ((cluster, "rollback"), (skipped, "skip-explosive")):
                for k in mask.nonzero().flatten().tolist():
                    notes[int(pos[k])] = note
        return Screening(take, notes)

    def roll_back(self, trials: torch.Tensor, theta: torch.Tensor, adam: Any) -> None:
        """Undo the steps that led the listed trials into trouble (they overflowed ``rollback``
        episodes in a row at a theta that the skips keep frozen, or exploded in
        ``rollback_explosive`` of their last 10 episodes).

        theta, Adam's second moment and step count and the explosive guard's norm window go
        back to the older of the trial's two snapshots (10-20 episodes back, taken after calm
        episodes only; the initial theta if none), Adam's first moment is zeroed (it points the
        way into the bad region), and the trial's meta learning rate is halved, as a trust
        region shrinks after a rejected step. ``theta`` and ``adam``'s tensors change in place.
        """
        if len(trials) == 0:
            return
        has = self.n_snapshots[trials] > 0
        snap, fresh = trials[has], trials[~has]
        theta[snap] = self.snap_theta[snap, 0]
        adam.v[snap] = self.snap_v[snap, 0]
        adam.t[snap] = self.snap_t[snap, 0]
        with_norms = snap[self.snap_norm_count[snap, 0] >= 0]  # the guard's bound, too, returns to its calm scale
        self.norms[with_norms] = self.snap_norms[with_norms, 0]
        self.norm_count[with_norms] = self.snap_norm_count[with_norms, 0]
        self.n_snapshots[snap] = 1  # the older snapshot stays, the newer one is dropped
        if len(fresh):
            start = torch.zeros(self.n_terms, dtype=theta.dtype)
            start[0] = self.theta0
            theta[fresh] = start
            adam.v[fresh] = 0.0
            adam.t[fresh] = 0
        adam.m[trials] = 0.0
        self.lr_factor[trials] *= 0.5
        self.rollbacks[trials] += 1
        self.bad_streak[trials] = 0
        self.explosive_recent[trials] = 0
        self.explosive_streak[trials] = 0

    def after_step(self, episode: int, idx: torch.Tensor, theta: torch.Tensor, adam: Any) -> None:
        """After the episode's Adam step: every ``ROLLBACK_SNAPSHOT`` episodes (when rollbacks
        are on), each listed trial that was calm (no non-finite episode now, explosive in fewer
        than half of ``rollback_explosive`` of its last 10) keeps a snapshot of its theta, Adam's
        v and t and its norm window; the two newest are kept."""
        if not (self.rollback or self.rollback_explosive) or episode % ROLLBACK_SNAPSHOT:
            return
        calm = self.bad_streak[idx] == 0
        if self.rollback_explosive:
            calm &= 2 * self.explosive_recent[idx].sum(1) < self.rollback_explosive
        rows = idx[calm]
        full = rows[self.n_snapshots[rows] == SNAPSHOTS]
        for t in (self.snap_theta, self.snap_v, self.snap_t, self.snap_norms, self.snap_norm_count):
            t[full, :-1] = t[full, 1:].clone()  # the oldest drops out
        slot = self.n_snapshots[rows].clamp(max=SNAPSHOTS - 1)
        self.snap_theta[rows, slot] = theta[rows]
        self.snap_v[rows, slot] = adam.v[rows]
        self.snap_t[rows, slot] = adam.t[rows]
        self.snap_norms[rows, slot] = self.norms[rows]
        self.snap_norm_count[rows, slot] = self.norm_count[rows]
        self.n_snapshots[rows] = (self.n_snapshots[rows] + 1).clamp(max=SNAPSHOTS)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """A deep copy of the per-trial state (tensors) and ``guarded_steps``."""
        d: dict[str, Any] = {k: getattr(self, k).clone() for k in _STATE}
        d["guarded_steps"] = self.guarded_steps
        return d

    def load_state_dict(self, d: dict) -> None:
        for k in _STATE:
            setattr(self, k, d[k].clone())
        self.guarded_steps = int(d["guarded_steps"])

    def load_legacy(self, s: dict) -> None:
        """Read the state from a checkpoint of the code before these tensors (plain lists per
        trial; settings newer than the checkpoint keep their fresh state)."""
        T = self.trials
        self.stopped = s["stopped"].clone()
        self.bad_streak = s["bad_streak"].clone()
        self.diverged_at = torch.zeros(T, dtype=torch.long)
        for i, ep in dict(s.get("diverged_at", {})).items():
            self.diverged_at[int(i)] = int(ep)
        if "explosive_streak" in s:
            self.explosive_streak = torch.tensor([int(x) for x in s["explosive_streak"]], dtype=torch.long)
        if "explosive_recent" in s:
            self._fill(self.explosive_recent, None, s["explosive_recent"])
        if "lr_factor" in s:
            self.lr_factor = s["lr_factor"].clone()
        if "rollbacks" in s:
            self.rollbacks = torch.tensor([int(x) for x in s["rollbacks"]], dtype=torch.long)
        self._fill(self.norms, self.norm_count, s["norm_history"])
        for i, snaps in enumerate(s.get("snapshots", [[] for _ in range(T)])):
            snaps = list(snaps)[-SNAPSHOTS:]
            self.n_snapshots[i] = len(snaps)
            for k, snap in enumerate(snaps):
                theta, v, t, *rest = snap  # snapshots from before explosive rollbacks have no norms
                self.snap_theta[i, k] = theta
                self.snap_v[i, k] = v
                self.snap_t[i, k] = t
                if rest:
                    vals = [float(x) for x in rest[0]][-NORM_WINDOW:]
                    self.snap_norms[i, k, NORM_WINDOW - len(vals):] = torch.tensor(vals, dtype=torch.float64)
                    self.snap_norm_count[i, k] = len(vals)
                else:
                    self.snap_norm_count[i, k] = -1
        self.guarded_steps = int(s["guarded_steps"])

    @staticmethod
    def _fill(window: torch.Tensor, count: torch.Tensor | None, lists: Sequence[Sequence[float]]) -> None:
        width = window.shape[1]
        for i, vals in enumerate(lists):
            vals = list(vals)[-width:]
            if vals:
                window[i, width - len(vals):] = torch.tensor(vals, dtype=window.dtype)
            if count is not None:
                count[i] = len(vals)
