"""Seeding of meta-training trials: trial i draws everything from generators seeded by
(seed, i) (labkit.meta.trial_generators), so the trials of a run differ from each other, and a
trial gives the same numbers whether it runs alone or among others, in any position."""
from __future__ import annotations

from itertools import combinations

import pytest
import torch

import labkit.meta
from labkit.meta import MetaConfig, MetaTrainer

SMALL = dict(dataset="digits", rule="bio", feedback="fa", hidden=(16,), M=3, K=3, Q=2, episodes=3,
             dtype="float64", seed=0)


def small(**kw) -> MetaConfig:
    return MetaConfig(**{**SMALL, **kw})


def test_every_trial_draws_its_own_task_initial_weights_and_feedback_matrices():
    ep = MetaTrainer(small(trials=3)).draw([0, 1, 2])
    assert len(ep.Ws) == 2 and len(ep.Bs) == 2  # one W and one B per layer of 784-16-3 under FA
    for i, j in combinations(range(3), 2):
        assert not torch.equal(ep.x_train[i], ep.x_train[j]), f"trials {i} and {j} drew the same training images"
        assert not torch.equal(ep.x_query[i], ep.x_query[j]), f"trials {i} and {j} drew the same query images"
        for l, (W, B) in enumerate(zip(ep.Ws, ep.Bs), start=1):
            assert not torch.equal(W[i], W[j]), f"trials {i} and {j} start from the same W_{l}"
            assert not torch.equal(B[i], B[j]), f"trials {i} and {j} have the same feedback matrix B_{l}"


def _rows(history: list[dict], trial: int) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "trial"} for r in history if r["trial"] == trial]


def _run_alone(trial: int, monkeypatch) -> list[dict]:
    """Trial ``trial``'s history from a one-trial run whose only trial draws from
    trial_generators(seed, trial): the trainer's trial 0, shifted."""
    original = labkit.meta.trial_generators
    calls = []

    def shifted(seed: int, t: int):
        calls.append(t)
        return original(seed, t + trial)

    with monkeypatch.context() as m:
        m.setattr(labkit.meta, "trial_generators", shifted)
        history = MetaTrainer(small(trials=1)).run(progress=False).history
    assert calls == [0], ("MetaTrainer no longer takes its trials' generators from "
                          "labkit.meta.trial_generators; run a trial alone in another way here")
    return _rows(history, 0)


def test_each_trial_gives_the_same_history_alone_as_among_others(monkeypatch):
    among = MetaTrainer(small(trials=3)).run(progress=False).history
    per_trial = [_rows(among, i) for i in range(3)]
    assert all(len(rows) == SMALL["episodes"] for rows in per_trial)
    for e in range(SMALL["episodes"]):
        losses = [rows[e]["meta_loss"] for rows in per_trial]
        assert len(set(losses)) == 3, f"episode {e + 1}: two trials have the same meta-loss {losses}"
    for i in range(3):
        alone = _run_alone(i, monkeypatch)
        assert [r["episode"] for r in alone] == [r["episode"] for r in per_trial[i]]
        for a, b in zip(alone, per_trial[i]):
            assert a.keys() == b.keys()
            for k in a:
                if isinstance(a[k], float):
                    assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), (
                        f"trial {i}, episode {a['episode']}, {k}: {a[k]!r} alone, {b[k]!r} among others")
                else:
                    assert a[k] == b[k], f"trial {i}, episode {a['episode']}, {k}: {a[k]!r} alone, {b[k]!r} among others"
