"""Meta-training engine: seeds, Adam, guards, divergence, checkpoints and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from labkit import learner
from labkit.evaluation import evaluate_rule
from labkit.guards import Guards, window_median
from labkit.meta import CheckpointError, DivergenceError, MaskedAdam, MetaConfig, MetaTrainer
from labkit.results import history_columns, read_history, read_theta

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=(16,), M=3, K=3, Q=2, trials=2, episodes=6, checkpoint_every=2)


def tiny(**kw) -> MetaConfig:
    return MetaConfig(**{**TINY, **kw})


def test_masked_adam_equals_torch_adam_for_stepping_trials():
    torch.manual_seed(0)
    p = torch.randn(3, 10, dtype=torch.float64)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    mine = MaskedAdam((3, 10), lr=1e-2, dtype=torch.float64)
    for _ in range(5):
        g = torch.randn(3, 10, dtype=torch.float64)
        ref.grad = g.clone()
        opt.step()
        p = mine.step(p, g, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(p, ref.detach(), atol=1e-12)


def test_masked_adam_leaves_a_masked_trial_untouched():
    adam = MaskedAdam((2, 10), lr=1e-2, dtype=torch.float64)
    p = torch.zeros(2, 10, dtype=torch.float64)
    p2 = adam.step(p, torch.ones(2, 10, dtype=torch.float64), torch.tensor([True, False]))
    assert (p2[1] == 0).all() and (p2[0] != 0).all()
    assert adam.t.tolist() == [1, 0] and (adam.v[1] == 0).all()


def test_the_same_seed_gives_the_same_history(tmp_path):
    a = MetaTrainer(tiny(rule="bio", episodes=3), out=tmp_path / "a").run(progress=False)
    b = MetaTrainer(tiny(rule="bio", episodes=3), out=tmp_path / "b").run(progress=False)
    ha, hb = read_history(tmp_path / "a"), read_history(tmp_path / "b")
    pd.testing.assert_frame_equal(ha, hb)
    assert np.array_equal(a.theta, b.theta)
    c = MetaTrainer(tiny(rule="bio", episodes=3, seed=1), out=tmp_path / "c").run(progress=False)
    assert not np.array_equal(a.theta, c.theta)


def test_a_trial_gives_the_same_numbers_alone_or_among_others():
    alone = MetaTrainer(tiny(rule="bio", trials=1, episodes=3, dtype="float64")).run(progress=False)
    among = MetaTrainer(tiny(rule="bio", trials=3, episodes=3, dtype="float64")).run(progress=False)
    h1 = [r for r in alone.history if r["trial"] == 0]
    h3 = [r for r in among.history if r["trial"] == 0]
    assert [r["episode"] for r in h1] == [r["episode"] for r in h3]
    for r1, r3 in zip(h1, h3):
        assert r1["meta_loss"] == pytest.approx(r3["meta_loss"], rel=1e-9)
    np.testing.assert_allclose(alone.theta[0], among.theta[0], rtol=1e-9, atol=1e-12)


def test_l1_shrinks_the_pool_coefficients_towards_zero():
    free = MetaTrainer(tiny(rule="pool", lam=0.0, episodes=5, trials=1)).run(progress=False)
    sparse = MetaTrainer(tiny(rule="pool", lam=1.0, episodes=5, trials=1)).run(progress=False)
    # With a huge lambda the L1 subgradient dominates: the coefficients that started at 0 stay near 0.
    assert np.abs(sparse.theta[0, 1:]).sum() < np.abs(free.theta[0, 1:]).sum()


def test_a_diverging_trial_is_stopped_and_the_others_go_on(tmp_path, monkeypatch):
    real = learner.meta_gradient
    calls = []

    def poisoned(theta, ep, mode="adjoint", compile=False):
        out = real(theta, ep, mode, compile=compile)
        calls.append(1)
        if theta.shape[0] == 2 and len(calls) >= 2:  # trial 1, from episode 2 on
            loss = out.loss.clone()
            loss[1] = float("nan")
            return learner.MetaGradient(loss, out.accuracy, out.grad, out.Ws)
        return out

    monkeypatch.setattr("labkit.meta.meta_gradient", poisoned)
    summary = MetaTrainer(tiny(rule="fa", episodes=8, patience=3, rollback=0), out=tmp_path).run(progress=False)
    h = read_history(tmp_path)
    t1 = h[h.trial == 1].sort_values("episode")
    assert t1.guarded.tolist()[1:3] == ["skip-nonfinite", "skip-nonfinite"]
    assert t1.diverged.tolist()[-1] == 1 and t1.episode.max() == 4  # 3 bad episodes in a row: 2, 3, 4
    assert h[h.trial == 0].episode.max() == 8  # the healthy trial finished
    assert summary.diverged.tolist() == [False, True]
    th = read_theta(tmp_path)
    assert th["diverged"] == [False, True] and th["n_trials_used"] == 1


def test_a_trial_stuck_overflowing_rolls_back_to_an_earlier_theta_with_half_the_meta_learning_rate(monkeypatch):
    real = learner.meta_gradient
    trainer = MetaTrainer(tiny(rule="bio", episodes=16, trials=2))

    def poisoned(theta, ep, mode="adjoint", compile=False):
        out = real(theta, ep, mode, compile=compile)
        if trainer.episode in (12, 13, 14):  # trial 1's inner loop overflows three times in a row
            loss = out.loss.clone()
            loss[1] = float("inf")
            return learner.MetaGradient(loss, out.accuracy, out.grad, out.Ws)
        return out

    monkeypatch.setattr("labkit.meta.meta_gradient", poisoned)
    clean = MetaTrainer(tiny(rule="bio", episodes=16, trials=2)).run(progress=False)
    h = pd.DataFrame(trainer.run(progress=False).history)
    t1 = h[h.trial == 1].set_index("episode")
    assert t1.loc[[12, 13, 14], "guarded"].tolist() == ["skip-nonfinite", "skip-nonfinite", "rollback"]
    assert t1.diverged.sum() == 0 and t1.index.max() == 16
    # episode 15 runs with the theta that episode 11 ran with (the snapshot after episode 10)
    cols = [c for c in h.columns if c.startswith("theta_")]
    np.testing.assert_array_equal(t1.loc[15, cols].to_numpy(float), t1.loc[11, cols].to_numpy(float))
    assert trainer.lr_factor.tolist() == [1.0, 0.5] and trainer.rollbacks.tolist() == [0, 1]
    t0, c0 = h[h.trial == 0], pd.DataFrame(clean.history).query("trial == 0")
    np.testing.assert_allclose(t0.meta_loss.to_numpy(), c0.meta_loss.to_numpy(), rtol=1e-6)  # the other trial is untouched


def test_a_cluster_of_explosive_meta_gradients_rolls_the_trial_back_to_its_calm_theta_and_norms(monkeypatch):
    real = learner.meta_gradient
    holder = {}

    def exploding(theta, ep, mode="adjoint", compile=False):
        out = real(theta, ep, mode, compile=compile)
        if 12 <= holder["t"].episode <= 16:  # trial 1's inner loop explodes five times in a row
            grad = out.grad.clone()
            grad[1] *= 1e6
            return learner.MetaGradient(out.loss, out.accuracy, grad, out.Ws)
        return out

    monkeypatch.setattr("labkit.meta.meta_gradient", exploding)
    trainer = holder["t"] = MetaTrainer(tiny(rule="bio", episodes=18, trials=2, rollback_explosive=5))
    h = pd.DataFrame(trainer.run(progress=False, stop_after=16).history)
    t1 = h[h.trial == 1].set_index("episode")
    assert t1.loc[12:16, "guarded"].tolist() == ["skip-explosive"] * 4 + ["rollback"]
    # episode 17 will run with the theta that episode 11 ran with (the snapshot after episode 10),
    # and the guard's bound is back at the scale of the calm episodes before it
    cols = [f"theta_{r}" for r in (0, 2, 9)]
    np.testing.assert_array_equal(trainer.theta[1, [0, 2, 9]].numpy(), t1.loc[11, cols].to_numpy(np.float32))
    norms = trainer.guards.norm_history(1)
    assert max(norms) < 1e3 * min(norms)
    assert trainer.lr_factor.tolist() == [1.0, 0.5] and trainer.rollbacks.tolist() == [0, 1]
    assert (h[h.trial == 0].guarded.fillna("") == "").all()  # the other trial is untouched
    # the same explosions without the cluster rule: skipped, never rolled back
    off = holder["t"] = MetaTrainer(tiny(rule="bio", episodes=16, trials=2, rollback_explosive=0))
    h_off = pd.DataFrame(off.run(progress=False).history)
    assert "rollback" not in set(h_off.guarded) and off.rollbacks.tolist() == [0, 0]


def test_rollback_state_survives_a_resume(tmp_path, monkeypatch):
    real = learner.meta_gradient
    holder = {}

    def poisoned(theta, ep, mode="adjoint", compile=False):
        out = real(theta, ep, mode, compile=compile)
        if holder["t"].episode in (12, 13, 14):
            loss = out.loss.clone()
            loss[0] = float("nan")
            return learner.MetaGradient(loss, out.accuracy, out.grad, out.Ws)
        return out

    monkeypatch.setattr("labkit.meta.meta_gradient", poisoned)
    holder["t"] = MetaTrainer(tiny(rule="bio", episodes=18, trials=1), out=tmp_path / "full")
    full = holder["t"].run(progress=False)
    holder["t"] = MetaTrainer(tiny(rule="bio", episodes=18, trials=1, checkpoint_every=1), out=tmp_path / "cut")
    holder["t"].run(progress=False, stop_after=15)
    holder["t"] = MetaTrainer(tiny(rule="bio", episodes=18, trials=1, checkpoint_every=1), out=tmp_path / "cut", resume=True)
    assert holder["t"].lr_factor.tolist() == [0.5]
    resumed = holder["t"].run(progress=False)
    np.testing.assert_array_equal(resumed.theta, full.theta)


def test_a_truly_diverging_rule_without_guards_stops_every_trial_and_keeps_results(tmp_path):
    cfg = tiny(rule="fa", episodes=4, skip_nonfinite=False)
    cfg.theta0 = 1e12  # an absurd inner learning rate: the online loop overflows to inf/NaN
    with pytest.raises(DivergenceError, match="all 2 trials diverged"):
        MetaTrainer(cfg, out=tmp_path).run(progress=False)
    h = read_history(tmp_path)
    assert h.diverged.sum() == 2 and (tmp_path / "theta.json").exists()


def test_ctrl_c_in_the_middle_of_an_episode_keeps_a_consistent_checkpoint_and_theta(tmp_path):
    full = tmp_path / "full"
    MetaTrainer(tiny(rule="bio", episodes=7, checkpoint_every=2), out=full).run(progress=False)

    cut = tmp_path / "cut"
    trainer = MetaTrainer(tiny(rule="bio", episodes=7, checkpoint_every=2), out=cut)
    real_step = trainer.step

    def dying_step():
        if trainer.episode == 5:  # Ctrl-C during episode 6, after its tasks were drawn
            trainer.episode += 1
            trainer.draw([0, 1])  # advances the trials' generators: a half-done episode
            raise KeyboardInterrupt
        return real_step()

    trainer.step = dying_step
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=False)
    assert read_history(cut).episode.max() == 5
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["episode"] == 5  # the last complete episode
    assert (cut / "theta.json").exists()  # nothing computed is lost
    MetaTrainer(tiny(rule="bio", episodes=7, checkpoint_every=2), out=cut, resume=True).run(progress=False)
    pd.testing.assert_frame_equal(read_history(full), read_history(cut))
    assert read_theta(full) == read_theta(cut)


def test_a_finished_run_extended_with_resume_equals_the_longer_run(tmp_path):
    full = tmp_path / "full"
    MetaTrainer(tiny(rule="bio", episodes=7, checkpoint_every=2), out=full).run(progress=False)
    cut = tmp_path / "cut"
    trainer = MetaTrainer(tiny(rule="bio", episodes=5, checkpoint_every=2), out=cut)
    trainer.run(progress=False)
    assert read_history(cut).episode.max() == 5
    resumed = MetaTrainer(tiny(rule="bio", episodes=7, checkpoint_every=2), out=cut, resume=True)
    assert resumed.episode == 5
    resumed.run(progress=False)
    pd.testing.assert_frame_equal(read_history(full), read_history(cut))


def test_resume_after_a_hard_kill_of_the_command_gives_the_uninterrupted_history(tmp_path):
    args = ["--hidden", "16", "--M", "3", "--K", "4", "--Q", "2", "--trials", "2", "--episodes", "40",
            "--checkpoint-every", "3", "--rule", "bio", "--quiet", "--threads", "1"]
    exe = [sys.executable, "-m", "labkit.cli", "discover"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(exe + args + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(exe + args + ["--out", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = cut / "history.csv"
        if hist.exists() and hist.read_text().count("\n") >= 2 * 10 + 1 and (cut / "checkpoint.pt").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_history(cut).episode.max() < 40, "the run finished before it could be killed"
    subprocess.run(exe + args + ["--out", str(cut), "--resume"], check=True, env=env, capture_output=True)
    pd.testing.assert_frame_equal(read_history(tmp_path / "full"), read_history(cut))


def test_a_corrupt_checkpoint_gives_a_clear_error_and_keeps_the_history(tmp_path):
    MetaTrainer(tiny(rule="fa", episodes=2), out=tmp_path).run(progress=False)
    before = (tmp_path / "history.csv").read_text()
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read.*Delete it"):
        MetaTrainer(tiny(rule="fa", episodes=4), out=tmp_path, resume=True)
    assert (tmp_path / "history.csv").read_text() == before


def test_resuming_with_other_settings_is_refused(tmp_path):
    MetaTrainer(tiny(rule="fa", episodes=2), out=tmp_path).run(progress=False)
    with pytest.raises(CheckpointError, match="different settings.*rule"):
        MetaTrainer(tiny(rule="bio", episodes=4), out=tmp_path, resume=True)


def test_a_second_run_into_the_same_folder_is_refused_without_resume(tmp_path):
    MetaTrainer(tiny(rule="fa", episodes=1), out=tmp_path).run(progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        MetaTrainer(tiny(rule="fa", episodes=1), out=tmp_path)


def test_history_has_the_documented_columns_and_one_row_per_trial_and_episode(tmp_path):
    MetaTrainer(tiny(rule="pool", episodes=3), out=tmp_path).run(progress=False)
    h = read_history(tmp_path)
    assert list(h.columns) == history_columns(2)
    assert len(h) == 2 * 3 and set(h.trial) == {0, 1}
    assert h[[f"theta_{r}" for r in range(10)]].notna().all().all()
    assert h.alpha_1.between(0, 180).all() and (h.ortho_1 >= 0).all()


def test_invalid_settings_fail_before_any_work():
    with pytest.raises(ValueError, match="M=12 classes per task.*10 classes"):
        MetaTrainer(tiny(M=12))
    with pytest.raises(ValueError, match="K\\+Q"):
        MetaTrainer(tiny(K=200))
    with pytest.raises(ValueError, match="unknown feedback pathway 'magic'; choose one of bp, fa, dfa"):
        MetaTrainer(tiny(feedback="magic"))
    with pytest.raises(ValueError, match="terms are numbered 0..9"):
        MetaTrainer(tiny(rule="0,12"))


def test_evaluate_rule_reports_one_accuracy_per_task():
    theta = np.zeros(10)
    theta[0] = 0.01
    accs = evaluate_rule("bp", theta, hidden=(16,), M=3, K=5, Q=2, tasks=5)
    assert accs.shape == (5,) and ((0 <= accs) & (accs <= 1)).all()
    assert np.array_equal(accs, evaluate_rule("bp", theta, hidden=(16,), M=3, K=5, Q=2, tasks=5))


def test_term_scaling_slows_only_the_terms_larger_than_the_pseudo_gradient():
    pool = MetaTrainer(tiny(rule="pool", trials=1))
    c = pool.term_scale
    assert c[0] == 1 and (c <= 1).all() and (c > 0).all()
    assert c[3] < 1 and c[5] < 1  # weight decay and the activity-scaled pseudo-gradient are big terms
    assert MetaTrainer(tiny(rule="fa", trials=1)).term_scale.eq(1).all()  # single-term rules: plain Adam
    off = MetaTrainer(tiny(rule="pool", trials=1, term_scaling=False))
    assert off.term_scale.eq(1).all()


def test_term_scaling_sets_the_size_of_each_coefficients_first_meta_step():
    trainer = MetaTrainer(tiny(rule="pool", trials=1, episodes=1, lam=0.0, warmup=0))
    before = trainer.theta.clone()
    trainer.run(progress=False)
    moved = (trainer.theta - before).abs()[0]
    # Adam's first step has size lr in every coordinate, times the term's scale.
    expected = trainer.config.meta_lr * trainer.term_scale
    nonzero = moved > 0
    torch.testing.assert_close(moved[nonzero], expected[nonzero].to(moved.dtype), rtol=1e-3, atol=1e-9)


def test_an_explosive_meta_gradient_is_skipped_and_clipping_is_the_fallback(tmp_path, monkeypatch):
    real = learner.meta_gradient
    calls = []

    def exploding(theta, ep, mode="adjoint", compile=False):
        out = real(theta, ep, mode, compile=compile)
        calls.append(1)
        if len(calls) in (7, 9):  # two episodes whose inner loop "blew up"
            return learner.MetaGradient(out.loss, out.accuracy, out.grad * 1e6, out.Ws)
        return out

    monkeypatch.setattr("labkit.meta.meta_gradient", exploding)
    MetaTrainer(tiny(rule="bio", episodes=10, trials=1, patience=1), out=tmp_path).run(progress=False)
    h = read_history(tmp_path).set_index("episode")
    assert h.loc[7, "guarded"] == "skip-explosive"
    theta_cols = [f"theta_{r}" for r in (0, 2, 9)]
    assert (h.loc[8, theta_cols] == h.loc[7, theta_cols]).all()  # no step was taken after episode 7
    # with patience 1, the next explosive gradient right after... is not in a row (episode 8 was fine): skipped too
    assert h.loc[9, "guarded"] == "skip-explosive"
    clipped = MetaTrainer(tiny(rule="bio", episodes=8, trials=1, explosive="clip"), out=tmp_path / "clip")
    calls.clear()
    clipped.run(progress=False)
    hc = read_history(tmp_path / "clip").set_index("episode")
    assert hc.loc[7, "guarded"] == "clip" and (hc.loc[8, theta_cols] != hc.loc[7, theta_cols]).any()


def test_running_trials_chunk_by_chunk_changes_no_number(tmp_path):
    whole = MetaTrainer(tiny(rule="bio", episodes=3, trials=3, chunk=3), out=tmp_path / "whole").run(progress=False)
    chunked = MetaTrainer(tiny(rule="bio", episodes=3, trials=3, chunk=2), out=tmp_path / "chunked").run(progress=False)
    np.testing.assert_allclose(chunked.theta, whole.theta, rtol=1e-6, atol=1e-9)
    a, b = read_history(tmp_path / "whole"), read_history(tmp_path / "chunked")
    np.testing.assert_allclose(b.meta_loss.to_numpy(), a.meta_loss.to_numpy(), rtol=1e-5)


def test_worker_processes_give_the_numbers_of_one_process(tmp_path):
    # Chunks of trials computed in 2 spawned processes (1 thread each) return exactly what
    # this process computes for the same chunks.
    serial = MetaTrainer(tiny(rule="bio", episodes=3, trials=4, chunk=2), out=tmp_path / "serial").run(progress=False)
    parallel = MetaTrainer(tiny(rule="bio", episodes=3, trials=4, chunk=2, workers=2, threads=1),
                           out=tmp_path / "parallel").run(progress=False)
    np.testing.assert_allclose(parallel.theta, serial.theta, rtol=1e-6, atol=1e-9)
    a, b = read_history(tmp_path / "serial"), read_history(tmp_path / "parallel")
    np.testing.assert_allclose(b.meta_loss.to_numpy(), a.meta_loss.to_numpy(), rtol=1e-5)
    assert json.loads((tmp_path / "parallel" / "config.json").read_text())["workers"] == 2


def test_a_dead_worker_is_reported_and_the_completed_episodes_are_kept(tmp_path, monkeypatch):
    import labkit.meta as meta

    trainer = MetaTrainer(tiny(rule="fa", episodes=4, trials=2, workers=2, threads=1, checkpoint_every=100),
                          out=tmp_path / "run")
    trainer.run(progress=False, stop_after=2)
    monkeypatch.setattr(meta, "_worker_meta_gradient", _die)
    with pytest.raises(RuntimeError, match="--resume"):
        trainer.run(progress=False)
    resumed = MetaTrainer(tiny(rule="fa", episodes=4, trials=2), out=tmp_path / "run", resume=True)
    assert resumed.completed_episodes == 2
    assert sorted(read_history(tmp_path / "run").episode.unique()) == [1, 2]


def _die(*args):
    os._exit(1)  # a worker killed mid-episode (as by the out-of-memory killer)


def test_proximal_l1_sets_weak_terms_exactly_to_zero_and_coupled_l1_does_not():
    # A large proximal lambda soft-thresholds after every Adam step: coefficients whose
    # meta-gradient does not push them out consistently end at exactly 0.
    prox = MetaTrainer(tiny(rule="pool", lam=2.0, l1="proximal", episodes=6, trials=1)).run(progress=False)
    assert (prox.theta[0, 1:] == 0).sum() >= 5
    coupled = MetaTrainer(tiny(rule="pool", lam=2.0, l1="coupled", episodes=6, trials=1)).run(progress=False)
    assert (coupled.theta[0, 1:] == 0).sum() == 0


def test_an_unknown_l1_mode_is_refused():
    with pytest.raises(ValueError, match="l1"):
        tiny(rule="pool", l1="sideways").resolved()


def test_a_checkpoint_from_before_the_cluster_rollback_resumes_only_as_it_ran(tmp_path):
    MetaTrainer(tiny(rule="bio", episodes=2, rollback_explosive=0), out=tmp_path).run(progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["rollback_explosive"]  # written by a version without the setting
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="rollback_explosive: 0 there, 5 now"):
        MetaTrainer(tiny(rule="bio", episodes=4), out=tmp_path, resume=True)
    resumed = MetaTrainer(tiny(rule="bio", episodes=4, rollback_explosive=0), out=tmp_path, resume=True)
    assert resumed.run(progress=False).theta.shape == (2, 10)


# ---------------------------------------------------------------------- the guards' tensor state


def test_the_window_median_is_numpys_median_bit_for_bit():
    rng = np.random.default_rng(0)
    width = 20
    for _ in range(300):
        n = int(rng.integers(1, width + 1))
        vals = rng.lognormal(0, 3, n) * rng.choice([1.0, 1e6])
        if rng.random() < 0.3:
            vals[rng.integers(0, n)] = vals[0]  # ties
        if rng.random() < 0.1:
            vals[rng.integers(0, n)] = np.inf
        row = torch.full((1, width), -7.0, dtype=torch.float64)  # garbage outside the window
        row[0, width - n:] = torch.tensor(vals)
        got = float(window_median(row, torch.tensor([n]))[0])
        assert got == float(np.median(vals)), (n, vals)
    nan_row = torch.tensor([[1.0, float("nan"), 3.0]], dtype=torch.float64)
    assert np.isnan(float(window_median(nan_row, torch.tensor([3]))[0]))


def test_the_guards_state_is_tensors_over_the_trial_axis():
    trainer = MetaTrainer(tiny(rule="bio", trials=3, episodes=12))
    h = pd.DataFrame(trainer.run(progress=False).history)
    g = trainer.guards
    T = 3
    assert g.norms.shape == (T, 20) and g.norms.dtype == torch.float64 and g.norm_count.tolist() == [12] * T
    assert g.explosive_recent.shape == (T, 10) and g.snap_theta.shape == (T, 2, 10)
    for name in ("stopped", "diverged_at", "bad_streak", "explosive_streak", "lr_factor", "rollbacks", "n_snapshots"):
        assert getattr(g, name).shape == (T,), name
    assert g.n_snapshots.tolist() == [1] * T  # one snapshot after episode 10
    # the snapshot holds the theta after episode 10's step, which episode 11 ran with
    row = h[(h.trial == 2) & (h.episode == 11)]
    cols = ["theta_0", "theta_2", "theta_9"]
    np.testing.assert_array_equal(g.snap_theta[2, 0, [0, 2, 9]].numpy(), row[cols].to_numpy(np.float32)[0])
    assert len(g.norm_history(0)) == 12 and g.norm_history(0) == [float(x) for x in g.norms[0, 8:]]


def _legacy_checkpoint(state: dict, with_norms: bool = True) -> dict:
    """The checkpoint as the code before the tensor state wrote it: per-trial Python lists."""
    s = dict(state)
    g = s.pop("guards")
    T = len(g["stopped"])

    def window(w, n):
        n = int(n)
        return [float(x) for x in w[len(w) - n:]] if n else []

    s.update(
        stopped=g["stopped"], bad_streak=g["bad_streak"], lr_factor=g["lr_factor"], guarded_steps=g["guarded_steps"],
        explosive_streak=g["explosive_streak"].tolist(),
        explosive_recent=[[int(x) for x in row] for row in g["explosive_recent"]],
        rollbacks=g["rollbacks"].tolist(),
        norm_history=[window(g["norms"][i], g["norm_count"][i]) for i in range(T)],
        diverged_at={i: int(e) for i, e in enumerate(g["diverged_at"]) if e},
        snapshots=[
            [(g["snap_theta"][i, k].clone(), g["snap_v"][i, k].clone(), g["snap_t"][i, k].clone())
             + ((torch.tensor(window(g["snap_norms"][i, k], g["snap_norm_count"][i, k]), dtype=torch.float64),)
                if with_norms else ())
             for k in range(int(g["n_snapshots"][i]))]
            for i in range(T)
        ],
    )
    return s


def test_a_checkpoint_with_the_old_list_state_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    real = learner.meta_gradient
    holder = {}

    def exploding(theta, ep, mode="adjoint", compile=False):
        out = real(theta, ep, mode, compile=compile)
        if 12 <= holder["t"].episode <= 16 and theta.shape[0] > 1:
            grad = out.grad.clone()
            grad[1] *= 1e6
            return learner.MetaGradient(out.loss, out.accuracy, grad, out.Ws)
        return out

    monkeypatch.setattr("labkit.meta.meta_gradient", exploding)
    cfg = dict(rule="bio", episodes=24, trials=2, checkpoint_every=1)
    holder["t"] = MetaTrainer(tiny(**cfg), out=tmp_path / "full")
    full = holder["t"].run(progress=False)
    holder["t"] = MetaTrainer(tiny(**cfg), out=tmp_path / "cut")
    holder["t"].run(progress=False, stop_after=18)  # after the cluster rollback at episode 16
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    new_state = torch.load(ckpt, weights_only=False)
    assert new_state["guards"]["rollbacks"].tolist() == [0, 1]
    torch.save(_legacy_checkpoint(new_state), ckpt)
    holder["t"] = MetaTrainer(tiny(**cfg), out=tmp_path / "cut", resume=True)
    loaded = holder["t"].guards.state_dict()
    for k, v in new_state["guards"].items():
        if k in ("norms", "snap_norms"):  # entries outside a trial's window are free
            continue
        assert (torch.equal(v, loaded[k]) if torch.is_tensor(v) else v == loaded[k]), k
    for i in range(2):
        assert holder["t"].guards.norm_history(i) == Guards.norm_history(_guards_from(new_state), i)
    resumed = holder["t"].run(progress=False)
    np.testing.assert_array_equal(resumed.theta, full.theta)
    pd.testing.assert_frame_equal(read_history(tmp_path / "full"), read_history(tmp_path / "cut"))


def _guards_from(state: dict) -> Guards:
    g = Guards(len(state["guards"]["stopped"]))
    g.load_state_dict(state["guards"])
    return g


def test_an_old_snapshot_without_norms_rolls_back_theta_and_keeps_the_norm_window():
    g = Guards(2, rollback_explosive=5)
    theta = torch.zeros(2, 10)
    adam = MaskedAdam((2, 10), lr=1e-3)
    legacy = {
        "stopped": torch.zeros(2, dtype=torch.bool), "bad_streak": torch.zeros(2, dtype=torch.long),
        "norm_history": [[1.0, 2.0, 3.0], [4.0] * 25], "guarded_steps": 3, "diverged_at": {},
        "snapshots": [[(torch.full((10,), 0.5), torch.full((10,), 2.0), torch.tensor(7))], []],
    }
    g.load_legacy(legacy)
    assert g.norm_count.tolist() == [3, 20] and g.norm_history(0) == [1.0, 2.0, 3.0]
    assert g.snap_norm_count[0, 0] == -1 and g.n_snapshots.tolist() == [1, 0] and g.guarded_steps == 3
    adam.m += 1.0
    g.roll_back(torch.tensor([0, 1]), theta, adam)
    assert (theta[0] == 0.5).all() and (adam.v[0] == 2.0).all() and int(adam.t[0]) == 7
    assert theta[1, 0] == pytest.approx(1e-3) and (theta[1, 1:] == 0).all() and int(adam.t[1]) == 0
    assert (adam.m == 0).all() and g.lr_factor.tolist() == [0.5, 0.5] and g.rollbacks.tolist() == [1, 1]
    assert g.norm_history(0) == [1.0, 2.0, 3.0]  # no norms in that snapshot: the window stays


def test_draw_without_advancing_shows_the_episode_that_the_next_step_runs(monkeypatch):
    real = learner.meta_gradient
    seen = {}

    def spy(theta, ep, mode="adjoint", compile=False):
        seen["ep"] = ep
        return real(theta, ep, mode, compile=compile)

    monkeypatch.setattr("labkit.meta.meta_gradient", spy)
    plain = MetaTrainer(tiny(rule="bio", trials=2, episodes=3)).run(progress=False)
    peeking = MetaTrainer(tiny(rule="bio", trials=2, episodes=3))
    for _ in range(3):
        peek = peeking.draw([0, 1], advance=False)
        again = peeking.draw([0, 1], advance=False)
        peeking.step()
        for a, b, c in zip(
            [peek.x_train, peek.y_train, peek.x_query, peek.y_query, *peek.Ws, *peek.Bs],
            [again.x_train, again.y_train, again.x_query, again.y_query, *again.Ws, *again.Bs],
            [seen["ep"].x_train, seen["ep"].y_train, seen["ep"].x_query, seen["ep"].y_query, *seen["ep"].Ws,
             *seen["ep"].Bs],
        ):
            assert torch.equal(a, b) and torch.equal(a, c)
    np.testing.assert_array_equal(peeking.theta.numpy(), plain.theta)  # peeking changed nothing
    first = MetaTrainer(tiny(rule="bio", trials=2, episodes=3))
    a, b = first.draw([0]), first.draw([0])  # advancing: the next draw is a new episode
    assert not torch.equal(a.x_train, b.x_train)
