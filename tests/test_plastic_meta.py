"""Meta-training with plastic feedback: phi meta-learned beside theta (docs/plastic-feedback.md).

Fixed feedback keeps its files (tests/test_golden.py holds its numbers bit for bit); with a
feedback rule, phi enters history.csv, theta.json, checkpoints, the trials split of
labkit.runs, ``labkit evaluate`` and ``labkit figures``.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from labkit.cli import main
from labkit.evaluation import evaluate_rule, load_phi_from_results
from labkit.feedback_terms import FEEDBACK_TERMS, N_FEEDBACK_TERMS
from labkit.learner import meta_gradient
from labkit.meta import MetaConfig, MetaTrainer, merge_states, slice_state
from labkit.metrics import weight_angles
from labkit.results import history_columns, phi_matrix, read_config, read_history, read_phi, read_theta, write_theta
from labkit.runs import discover

TINY = dict(rule="fa", hidden=(16,), M=3, K=3, Q=2, trials=2, episodes=4, checkpoint_every=2, threads=1)
SMALL = ["--hidden", "16", "--M", "3", "--K", "3", "--Q", "2", "--trials", "2", "--quiet", "--workers", "1"]


def tiny(**kw) -> MetaConfig:
    return MetaConfig(**{**TINY, **kw})


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker local Dask cluster (as in tests/test_runs.py)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def test_the_feedback_rule_is_validated_and_normalised_before_any_work():
    assert tiny().resolved().feedback_rule is None
    assert tiny(feedback_rule="none").resolved().feedback_rule is None
    assert tiny(feedback_rule=" KP ").resolved().feedback_rule == "kp"
    assert tiny(feedback_rule=[1, 0]).resolved().feedback_rule == "1,0"
    # warm-up: phi's coefficients count (one theta term + two phi terms)
    assert tiny().resolved().warmup == 0 and tiny(feedback_rule="kp").resolved().warmup == 20
    with pytest.raises(ValueError, match="unknown feedback term 'magic'"):
        tiny(feedback_rule="magic").resolved()
    with pytest.raises(ValueError, match=r"unknown feedback terms \[7\]"):
        tiny(feedback_rule="0,7").resolved()
    for pathway in ("bp", "usf", "frsf", "dfa", "drtp"):
        with pytest.raises(ValueError, match=f"refused for pathway '{pathway}'"):
            tiny(feedback=pathway, feedback_rule="kp").resolved()


def test_fixed_feedback_writes_no_phi_anywhere(tmp_path):
    summary = MetaTrainer(tiny(episodes=2), out=tmp_path).run(progress=False)
    assert list(read_history(tmp_path).columns) == history_columns(2)
    assert not any(c.startswith("phi_") for c in read_history(tmp_path).columns)
    assert "phi" not in json.loads((tmp_path / "theta.json").read_text())
    assert read_phi(tmp_path) is None and phi_matrix(tmp_path) is None
    assert read_config(tmp_path)["feedback_rule"] is None and "feedback_terms" not in read_config(tmp_path)
    assert "phi" not in torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert summary.phi is None and "phi" not in summary.text()


def test_a_kp_run_meta_learns_phi_and_writes_it_to_history_and_theta_json(tmp_path):
    trainer = MetaTrainer(tiny(feedback_rule="kp"), out=tmp_path)
    summary = trainer.run(progress=False)
    h = read_history(tmp_path)
    assert list(h.columns) == history_columns(2, plastic_feedback=True)
    assert len(h) == 2 * 4
    # phi starts at 0, then moves; the inactive feedback terms stay blank
    assert (h.loc[h.episode == 1, ["phi_0", "phi_1"]] == 0).all().all()
    assert (h.loc[h.episode > 1, ["phi_0", "phi_1"]] != 0).all().all()
    assert h[["phi_2", "phi_3"]].isna().all().all()
    assert np.isfinite(h.meta_loss).all()
    th = read_theta(tmp_path)
    assert th["terms"] == [0] and th["phi"]["terms"] == [0, 1]
    assert th["phi"]["names"] == [FEEDBACK_TERMS[0].name, FEEDBACK_TERMS[1].name]
    assert set(th["phi"]["mean"]) == {"phi_0", "phi_1"} and th["phi"]["n_trials_used"] == 2
    assert np.array_equal(phi_matrix(tmp_path), trainer.phi.double().numpy())
    assert not trainer.phi[:, 2:].any()  # inactive coefficients never move
    assert read_config(tmp_path)["feedback_rule"] == "kp" and read_config(tmp_path)["feedback_terms"] == [0, 1]
    assert summary.phi.shape == (2, N_FEEDBACK_TERMS) and "phi_0=" in summary.text()
    phi, rule = load_phi_from_results(tmp_path)
    assert rule == "kp" and phi.shape == (2, N_FEEDBACK_TERMS)


def test_the_weight_angle_is_measured_with_the_adapted_feedback_matrices(tmp_path):
    trainer = MetaTrainer(tiny(feedback_rule="kp", episodes=3, warmup=0, meta_lr=0.01))
    trainer.step()  # phi moves off 0
    ep = trainer.draw([0, 1], advance=False)
    mg = meta_gradient(trainer.theta, ep, phi=trainer.phi)
    rows = trainer.step()
    adapted = weight_angles(mg.Ws, mg.Bs, "fa")
    fixed = weight_angles(mg.Ws, ep.Bs, "fa")
    for j, row in enumerate(rows):
        assert row["weight_angle_1"] == float(adapted[j, 0]) and row["weight_angle_2"] == float(adapted[j, 1])
    assert not torch.equal(adapted, fixed)


def test_resume_after_a_stop_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = tiny(feedback_rule="kp", episodes=6, checkpoint_every=1, warmup=2)
    MetaTrainer(cfg, out=full).run(progress=False)
    MetaTrainer(cfg, out=cut).run(progress=False, stop_after=3)
    assert read_history(cut).episode.max() == 3
    resumed = MetaTrainer(cfg, out=cut, resume=True)
    assert resumed.episode == 3 and resumed.phi[:, :2].any()
    resumed.run(progress=False)
    assert (cut / "history.csv").read_bytes() == (full / "history.csv").read_bytes()
    assert (cut / "theta.json").read_bytes() == (full / "theta.json").read_bytes()
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert torch.equal(a["phi"], b["phi"]) and torch.equal(a["theta"], b["theta"])
    assert all(torch.equal(a["adam"][k], b["adam"][k]) for k in a["adam"])
    # a fixed-feedback checkpoint is not resumed as a plastic run
    from labkit.meta import CheckpointError

    MetaTrainer(tiny(episodes=1), out=tmp_path / "fixed").run(progress=False)
    with pytest.raises(CheckpointError, match="feedback_rule: None there, kp now"):
        MetaTrainer(tiny(episodes=2, feedback_rule="kp"), out=tmp_path / "fixed", resume=True)


def test_a_checkpoint_from_before_plastic_feedback_resumes(tmp_path):
    MetaTrainer(tiny(episodes=2), out=tmp_path).run(progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["feedback_rule"]  # written before the setting existed
    torch.save(state, ckpt)
    resumed = MetaTrainer(tiny(episodes=3), out=tmp_path, resume=True)
    assert resumed.phi is None and resumed.run(progress=False).episodes_done == 3


@pytest.fixture
def one_thread():
    """One torch thread: batched reductions then round alike whatever the batch size (as in a run
    with threads=1; with more threads, chunking changes the last bits, tests/test_meta.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_chunks_and_checkpoint_slices_keep_phi(tmp_path, one_thread):
    one = MetaTrainer(tiny(feedback_rule="0,3", episodes=2, trials=3, chunk=4, warmup=0))
    chunked = MetaTrainer(tiny(feedback_rule="0,3", episodes=2, trials=3, chunk=2, warmup=0))
    for _ in range(2):
        assert one.step() == chunked.step()
    assert torch.equal(one.phi, chunked.phi)
    state = one.checkpoint_state()
    parts = [slice_state(state, [0, 1]), slice_state(state, [2])]
    assert parts[1]["phi"].shape == (1, N_FEEDBACK_TERMS)
    merged = merge_states(parts)
    assert torch.equal(merged["phi"], state["phi"]) and torch.equal(merged["theta"], state["theta"])


def test_a_run_split_over_two_workers_equals_the_one_process_run(tmp_path, cluster):
    cfg = dict(feedback_rule="kp", trials=3, episodes=3, warmup=0)
    serial = tmp_path / "serial"
    discover(tiny(**cfg), serial, progress=False)
    for split in ("trials", "episode"):
        out = tmp_path / split
        discover(tiny(**cfg, workers=2), out, scheduler=cluster.scheduler_address, split=split, progress=False)
        for name in ("history.csv", "theta.json"):
            assert (out / name).read_bytes() == (serial / name).read_bytes(), (split, name)
        a = torch.load(serial / "checkpoint.pt", weights_only=False)
        b = torch.load(out / "checkpoint.pt", weights_only=False)
        assert torch.equal(a["phi"], b["phi"]) and torch.equal(a["adam"]["v"], b["adam"]["v"]), split


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--feedback-rule", "magic"], "unknown feedback term 'magic'"),
        (["--feedback-rule", "0,9"], r"unknown feedback terms \[9\]"),
        (["--feedback", "bp", "--feedback-rule", "kp"], "refused for pathway 'bp'.*use feedback='fa'"),
        (["--rule", "bp", "--feedback-rule", "kp"], "refused for pathway 'bp'"),
        (["--feedback", "dfa", "--feedback-rule", "0"], "refused for pathway 'dfa'"),
    ],
)
def test_bad_feedback_rules_are_one_line_errors_on_the_command_line(tmp_path, capsys, argv, message):
    import re

    code, out, err = run_cli(capsys, "discover", *SMALL, *argv, "--out", str(tmp_path / "run"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and re.search(message, lines[0]), err
    assert not (tmp_path / "run" / "history.csv").exists()


def test_discover_help_lists_the_feedback_terms_with_their_equations(capsys):
    with pytest.raises(SystemExit):
        main(["discover", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--feedback-rule" in text
    for t in FEEDBACK_TERMS:
        assert f"{t.index} {t.name}: G = {t.equation}" in text


def test_evaluate_applies_the_folders_phi_and_phi_zero_is_fixed_feedback(tmp_path, capsys):
    theta = np.zeros(10)
    theta[0] = 0.05
    fixed = evaluate_rule("fa", theta, hidden=(16,), M=3, K=5, Q=2, tasks=6)
    zero = evaluate_rule("fa", theta, hidden=(16,), M=3, K=5, Q=2, tasks=6, phi=np.zeros(4), feedback_rule="kp")
    assert np.array_equal(fixed, zero)  # plastic feedback with phi = 0 is fixed feedback, bit for bit
    with pytest.raises(ValueError, match="needs phi"):
        evaluate_rule("fa", theta, hidden=(16,), M=3, K=5, Q=2, tasks=2, feedback_rule="kp")
    with pytest.raises(ValueError, match="refused for pathway 'bp'"):
        evaluate_rule("bp", theta, hidden=(16,), M=3, K=5, Q=2, tasks=2, phi=np.zeros(4), feedback_rule="kp")

    run = tmp_path / "kp"
    code, out, err = run_cli(capsys, "discover", *SMALL, "--rule", "fa", "--feedback-rule", "kp", "--episodes", "2",
                             "--out", str(run))
    assert code == 0, err
    assert "plastic feedback kp" in out and "phi (mean over trials)" in out
    # the folder's final coefficients, made large enough for B to change within an episode
    th = read_theta(run)
    write_theta(run, np.tile(theta, (2, 1)), th["terms"], th["diverged"], phi=np.tile([0.05, 0.01, 0, 0], (2, 1)),
                feedback_terms=(0, 1))
    zeroed = tmp_path / "zeroed"
    shutil.copytree(run, zeroed)
    write_theta(zeroed, np.tile(theta, (2, 1)), th["terms"], th["diverged"], phi=np.zeros((2, 4)),
                feedback_terms=(0, 1))
    args = ["evaluate", "--hidden", "16", "--M", "3", "--K", "10", "--Q", "5", "--tasks", "8"]
    reports = {}
    for folder in (run, zeroed):
        code, out, err = run_cli(capsys, *args, "--results", str(folder), "--json", str(tmp_path / "e.json"))
        assert code == 0, err
        reports[folder.name] = json.loads((tmp_path / "e.json").read_text())[folder.name]["mean"]
    assert reports["kp"] != reports["zeroed"]
    assert reports["zeroed"] == pytest.approx(float(np.mean(
        evaluate_rule("fa", theta, hidden=(16,), M=3, K=10, Q=5, tasks=8, seed=1000))), rel=1e-6)


def test_figures_draw_phi_only_for_runs_with_plastic_feedback(tmp_path, capsys):
    MetaTrainer(tiny(feedback_rule="kp", episodes=3), out=tmp_path / "kp").run(progress=False)
    MetaTrainer(tiny(episodes=3), out=tmp_path / "fixed").run(progress=False)
    code, out, err = run_cli(capsys, "figures", str(tmp_path / "kp"), "--out", str(tmp_path / "f1"), "--window", "1")
    assert code == 0, err
    assert (tmp_path / "f1" / "phi.png").stat().st_size > 1000 and (tmp_path / "f1" / "theta.png").exists()
    code, out, err = run_cli(capsys, "figures", str(tmp_path / "fixed"), "--out", str(tmp_path / "f2"))
    assert code == 0, err
    assert not (tmp_path / "f2" / "phi.png").exists() and (tmp_path / "f2" / "theta.png").exists()
