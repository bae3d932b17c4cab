"""Library support for the follow-up study (Oja's rule and deep / badly initialised networks,
learned rules with scarce data): the initialisation scale, deep networks end to end, the
effective rank, hidden-layer statistics over online learning, evaluation at several K, and
evaluating a rule on another dataset than the one it was learned on."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from labkit.cli import main
from labkit.data import load_dataset
from labkit.evaluation import evaluate_rule
from labkit.feedback import init_feedback
from labkit.learner import learning_curve, online_train
from labkit.meta import MetaConfig, MetaTrainer
from labkit.metrics import effective_rank, hidden_effective_ranks, weight_norms
from labkit.networks import init_weights, xavier_bound
from labkit.results import read_config, read_history
from labkit.rules import make_rule
from test_data import write_tiny_dataset

BIO_THETA = [1e-3, 0.0, -1e-4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5e-4]
DEEP = (100,) * 12  # 12 hidden layers of width 100
SMALL_TASK = dict(M=3, Q=2)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- initialisation scale


def test_init_scale_one_is_the_xavier_draw_itself_and_other_scales_multiply_the_same_draw():
    sizes = (20, 7, 5, 3)
    default = init_weights(sizes, gens([1, 2]))
    assert all(torch.equal(a, b) for a, b in zip(default, init_weights(sizes, gens([1, 2]), scale=1.0)))
    for s in (0.25, 3.0):
        scaled = init_weights(sizes, gens([1, 2]), scale=s)
        for l, (W, W1) in enumerate(zip(scaled, default), start=1):
            assert torch.equal(W, W1 * s)
            assert float(W.abs().max()) <= s * xavier_bound(sizes[l], sizes[l - 1])


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "big"])
def test_a_scale_that_is_not_a_finite_positive_number_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="init_scale .* > 0"):
        init_weights((4, 3, 2), gens([0]), scale=bad)
    with pytest.raises(ValueError, match="init_scale .* > 0"):
        MetaConfig(init_scale=bad).resolved()


def test_meta_training_draws_weights_at_the_configured_scale_and_the_feedback_at_xavier_scale():
    small = dict(hidden=(8,), M=3, K=2, Q=2, trials=2, episodes=1, compile=False)
    one = MetaTrainer(MetaConfig(**small), out=None).draw([0, 1])
    three = MetaTrainer(MetaConfig(**small, init_scale=3), out=None)
    assert three.config.init_scale == 3.0 and three.config_record()["init_scale"] == 3.0
    ep = three.draw([0, 1])
    assert all(torch.equal(W3, W1 * 3.0) for W3, W1 in zip(ep.Ws, one.Ws))
    assert all(torch.equal(B3, B1) for B3, B1 in zip(ep.Bs, one.Bs))


def test_init_scale_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--init-scale", "0", "--out", str(tmp_path / "x"), "--quiet"])
    assert exc.value.code == 2 and "--init-scale takes a number > 0" in capsys.readouterr().err
    code, out, err = run(capsys, "discover", "--hidden", "8", "--M", "3", "--K", "2", "--Q", "2", "--trials", "1",
                         "--episodes", "1", "--rule", "fa", "--init-scale", "2.5", "--workers", "1", "--quiet",
                         "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert read_config(tmp_path / "run")["init_scale"] == 2.5
    code, out, err = run(capsys, "evaluate", "--hidden", "8", "--M", "3", "--K", "2", "--Q", "2", "--tasks", "2",
                         "--rule", "fa", "--theta", "0.01", "--init-scale", "2.5")
    assert code == 0, err
    assert "query accuracy" in out


def test_the_online_learning_helpers_take_the_scale_too():
    from labkit.analysis import fresh_tasks
    from labkit.tutorial import online_learning

    one = fresh_tasks((8,), 2, 3, M=3, Q=2)
    two = fresh_tasks((8,), 2, 3, M=3, Q=2, init_scale=2.0)
    assert all(torch.equal(W2, W1 * 2.0) for W2, W1 in zip(two.Ws, one.Ws))
    curve = online_learning("fa", {0: 0.01}, n_samples=20, trials=1, every=10, hidden=(8,), init_scale=0.5)
    assert curve["accuracy"].shape == (1, 3)
    with pytest.raises(ValueError, match="init_scale"):
        online_learning("fa", {0: 0.01}, n_samples=20, trials=1, hidden=(8,), init_scale=-1)


# ---------------------------------------------------------------- effective rank


def test_effective_rank_of_k_orthogonal_equal_norm_directions_is_k():
    Q, _ = torch.linalg.qr(torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for k in (1, 2, 4, 6):
        A = 3.0 * Q[:, :k].T  # k samples (rows), orthogonal, of norm 3, in 12 units
        assert float(effective_rank(A)) == pytest.approx(k, rel=1e-10)
        # repeating the samples (N > k) keeps k equal singular values
        assert float(effective_rank(torch.cat([A, A]))) == pytest.approx(k, rel=1e-10)


def test_effective_rank_is_one_for_rank_one_invariant_to_scale_and_batched_equals_per_trial():
    g = torch.Generator().manual_seed(1)
    u, v = torch.rand(30, generator=g), torch.rand(9, generator=g)
    assert float(effective_rank(torch.outer(u, v))) == pytest.approx(1.0, abs=1e-5)
    X = torch.rand(4, 30, 9, generator=g)  # (T, N, n)
    batched = effective_rank(X)
    assert batched.shape == (4,) and batched.dtype == torch.float32
    per_trial = torch.stack([effective_rank(X[t]) for t in range(4)])
    assert torch.allclose(batched, per_trial, rtol=1e-6)
    assert torch.allclose(effective_rank(X * 1e3), batched, rtol=1e-5)
    assert torch.allclose(effective_rank(-0.01 * X), batched, rtol=1e-5)
    assert bool(((batched >= 1) & (batched <= 9)).all())
    # unequal singular values: between 1 and their number, by the formula
    A = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    p = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64) / 8
    assert float(effective_rank(A)) == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    assert math.isnan(float(effective_rank(torch.zeros(3, 5))))
    # a diverged network's activations (inf or NaN) have no rank; the other trials keep theirs
    broken = X.clone()
    broken[1, 3, 2], broken[2, 0, 0] = math.inf, math.nan
    ranks = effective_rank(broken)
    assert torch.isnan(ranks[1:3]).all() and torch.equal(ranks[[0, 3]], batched[[0, 3]])
    with pytest.raises(ValueError, match=r"\(N, n\) or \(T, N, n\)"):
        effective_rank(torch.ones(5))


# ---------------------------------------------------------------- online learning: hidden-layer statistics


@pytest.fixture(scope="module")
def stream():
    ds = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    order = torch.stack([torch.randperm(len(ds), generator=g)[:40] for _ in range(2)])
    return ds.images[order], ds.labels[order], ds.images[:50].expand(2, -1, -1), ds.labels[:50].expand(2, -1)


def test_learning_curve_records_weight_norms_and_effective_ranks_at_chosen_steps(stream):
    x, y, x_eval, y_eval = stream
    sizes = (784, 16, 12, 10)
    wg = gens([3, 4])
    Ws, Bs = init_weights(sizes, wg), init_feedback("fa", sizes, wg)
    rule = make_rule("bio", 3)
    theta = torch.tensor(BIO_THETA).expand(2, -1).contiguous()
    plain = learning_curve(Ws, Bs, "fa", rule, theta, x, y, x_eval, y_eval, every=10)
    assert set(plain) == {"steps", "accuracy", "loss", "alpha"}  # off by default
    assert plain["steps"].tolist() == [0, 10, 20, 30, 40]

    probe = x_eval[0, :20]  # one probe batch for both trials
    c = learning_curve(Ws, Bs, "fa", rule, theta, x, y, x_eval, y_eval, steps=[0, 3, 20, 40], probe=probe)
    assert c["steps"].tolist() == [0, 3, 20, 40]
    assert c["accuracy"].shape == (2, 4) and c["alpha"].shape == (2, 4, 2)
    assert c["weight_norm"].shape == (2, 4, 3) and c["effective_rank"].shape == (2, 4, 2)
    # the same measurements as the plain curve at the steps both have
    for i, j in ((0, 0), (2, 2), (3, 4)):
        assert torch.equal(c["accuracy"][:, i], plain["accuracy"][:, j])
        assert torch.equal(c["loss"][:, i], plain["loss"][:, j])
    # at step 0 the initial weights, at the end the weights online_train returns
    probe_T = probe.expand(2, -1, -1)
    assert torch.equal(c["weight_norm"][:, 0], weight_norms(Ws))
    assert torch.equal(c["effective_rank"][:, 0], hidden_effective_ranks(Ws, probe_T))
    W_end = online_train(Ws, Bs, "fa", rule, theta, x, y)
    assert torch.allclose(c["weight_norm"][:, -1], torch.stack([W.flatten(1).norm(dim=1) for W in W_end], -1))
    assert torch.equal(c["effective_rank"][:, -1], hidden_effective_ranks(W_end, probe_T))
    assert bool(((c["effective_rank"] >= 1) & (c["effective_rank"] <= 16)).all())
    with pytest.raises(ValueError, match="steps must be sample counts in 0..40"):
        learning_curve(Ws, Bs, "fa", rule, theta, x, y, x_eval, y_eval, steps=[0, 41])
    with pytest.raises(ValueError, match="probe must be"):
        learning_curve(Ws, Bs, "fa", rule, theta, x, y, x_eval, y_eval, probe=torch.ones(3, 20, 784))


# ---------------------------------------------------------------- deep networks, end to end


@pytest.mark.parametrize("rule, feedback", [("fa", "fa"), ("bp", "bp"), ("bio", "fa")])
def test_twelve_hidden_layers_meta_train_evaluate_and_learn_online(rule, feedback, stream, tmp_path, capsys):
    hidden = ",".join(map(str, DEEP))
    code, out, err = run(capsys, "discover", "--hidden", hidden, "--rule", rule, "--M", "3", "--K", "3", "--Q", "2",
                         "--trials", "1", "--episodes", "2", "--workers", "1", "--compile", "off", "--quiet",
                         "--out", str(tmp_path / rule))
    assert code == 0, err
    assert "net 784-" + "-".join(["100"] * 12) + "-10" in out
    h = read_history(tmp_path / rule)
    assert len(h) == 2 and read_config(tmp_path / rule)["feedback"] == feedback
    assert [f"alpha_{l}" for l in range(1, 13)] == [c for c in h.columns if c.startswith("alpha_")]
    assert {f"weight_angle_{l}" for l in range(1, 14)} <= set(h.columns)
    assert {f"ortho_{l}" for l in range(1, 14)} <= set(h.columns)
    assert np.isfinite(h[["meta_loss", "meta_accuracy", "alpha_12", "ortho_13"]].to_numpy()).all()

    code, out, err = run(capsys, "evaluate", "--results", str(tmp_path / rule), "--M", "3", "--K", "3", "--Q", "2",
                         "--tasks", "2")
    assert code == 0, err
    assert "query accuracy" in out
    theta = BIO_THETA if rule == "bio" else [1e-2] + [0.0] * 9
    accs = evaluate_rule(rule, theta, feedback, hidden=DEEP, tasks=2, K=3, **SMALL_TASK)
    assert accs.shape == (2,) and np.isfinite(accs).all()

    x, y, x_eval, y_eval = stream
    sizes = (784, *DEEP, 10)
    wg = gens([5, 6])
    Ws, Bs = init_weights(sizes, wg), init_feedback(feedback, sizes, wg)
    c = learning_curve(Ws, Bs, feedback, make_rule(rule, 13), torch.tensor(theta).expand(2, -1).contiguous(),
                       x[:, :20], y[:, :20], x_eval, y_eval, steps=[0, 20], probe=x_eval[0, :30])
    assert c["alpha"].shape == (2, 2, 12) and c["weight_norm"].shape == (2, 2, 13)
    assert c["effective_rank"].shape == (2, 2, 12)
    assert torch.isfinite(c["weight_norm"]).all() and torch.isfinite(c["effective_rank"]).all()
    assert torch.isfinite(c["loss"]).all()


# ---------------------------------------------------------------- evaluation at several K


def test_evaluate_rule_at_several_K_gives_what_each_K_gives_alone():
    kw = dict(rule="bio", theta=BIO_THETA, feedback="fa", hidden=(16,), tasks=3, seed=7, **SMALL_TASK)
    many = evaluate_rule(K=[1, 4], **kw)
    assert isinstance(many, dict) and list(many) == [1, 4]
    for K in (1, 4):
        alone = evaluate_rule(K=K, **kw)
        assert isinstance(alone, np.ndarray) and alone.shape == (3,)
        assert np.array_equal(many[K], alone)
    with pytest.raises(ValueError, match="K must be a positive integer"):
        evaluate_rule(K=[], **kw)


def test_evaluate_command_prints_one_result_per_K(tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "--hidden", "16", "--M", "3", "--K", "1,4", "--Q", "2", "--tasks", "3",
                         "--rule", "bio", "--theta", "1e-3,-1e-4,5e-4", "--json", str(tmp_path / "eval.json"))
    assert code == 0, err
    lines = [line for line in out.splitlines() if "query accuracy" in line]
    assert len(lines) == 2 and lines[0].startswith("bio K=1 ") and lines[1].startswith("bio K=4 ")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert list(report["bio"]) == ["1", "4"]
    alone = evaluate_rule("bio", BIO_THETA, None, hidden=(16,), K=4, tasks=3, seed=1000, **SMALL_TASK)
    assert report["bio"]["4"]["accuracy"] == [float(a) for a in alone]
    assert report["bio"]["4"]["tasks"] == 3 and report["bio"]["4"]["K"] == 4
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--K", "1,0", "--rule", "fa", "--theta", "0.01"])
    assert exc.value.code == 2 and "--K takes a positive integer or a list" in capsys.readouterr().err


# ---------------------------------------------------------------- a rule learned on digits, evaluated elsewhere


def test_a_rule_learned_on_digits_is_evaluated_on_mnist_fashion_and_emnist_from_disk(tmp_path, capsys, monkeypatch):
    for name in ("mnist", "fashion-mnist", "emnist"):
        write_tiny_dataset(tmp_path / "data", name)
    code, _, err = run(capsys, "discover", "--hidden", "16", "--rule", "bio", "--M", "3", "--K", "3", "--Q", "2",
                       "--trials", "1", "--episodes", "1", "--workers", "1", "--quiet", "--out", str(tmp_path / "bio"))
    assert code == 0, err
    assert read_config(tmp_path / "bio")["sizes"] == [784, 16, 10]

    import labkit.evaluation as evaluation

    drawn = []
    real = evaluation.init_weights
    monkeypatch.setattr(evaluation, "init_weights", lambda sizes, *a, **k: drawn.append(tuple(sizes)) or real(sizes, *a, **k))
    for name, outputs in (("mnist", 10), ("fashion-mnist", 10), ("emnist", 47)):
        drawn.clear()
        code, out, err = run(capsys, "evaluate", "--results", str(tmp_path / "bio"), "--dataset", name,
                             "--data-root", str(tmp_path / "data"), "--M", "3", "--K", "3,5", "--Q", "2", "--tasks", "2")
        assert code == 0, err
        assert f"meta-trained on digits (network 784-16-10); its rule is evaluated on {name}" in err
        assert "the rule transfers, not the weights" in err
        assert "bio K=3" in out and "bio K=5" in out
        assert set(drawn) == {(784, 16, outputs)}  # fresh networks with the target dataset's outputs
    # the same dataset as meta-training: no note
    code, out, err = run(capsys, "evaluate", "--results", str(tmp_path / "bio"), "--M", "3", "--K", "3", "--Q", "2",
                         "--tasks", "2")
    assert code == 0 and "transfers" not in err


# ---------------------------------------------------------------- the follow-up's experiments


def test_paired_comparison_measures_each_rule_against_the_baseline_on_the_same_tasks():
    from labkit.analysis import paired_comparison
    import pandas as pd

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, size=40)
    noise = rng.normal(0, 0.05, size=40)
    rows = pd.DataFrame([
        dict(K=1, rule="bp", accuracy=base),
        dict(K=1, rule="better", accuracy=base + 0.1),  # better on every task by exactly 0.1
        dict(K=1, rule="same", accuracy=base + noise - noise.mean()),  # no better on average
        dict(K=1, rule="worse", accuracy=base - 0.2),
    ])
    t = paired_comparison(rows, "bp", by=["K"]).set_index("rule")
    assert t.loc["better", "diff"] == pytest.approx(0.1)
    assert t.loc["better", "diff_low"] == pytest.approx(0.1) and t.loc["better", "above"]
    assert t.loc["same", "diff_low"] < 0 < t.loc["same", "diff_high"]
    assert not t.loc["same", "above"] and not t.loc["same", "below"]
    assert t.loc["worse", "below"] and not t.loc["worse", "above"]
    assert np.isnan(t.loc["bp", "diff"])
    assert t.loc["bp", "accuracy"] == pytest.approx(base.mean())
    assert t.loc["bp", "ci_low"] <= t.loc["bp", "accuracy"] <= t.loc["bp", "ci_high"]
    # the pairing matters: unpaired, the CIs of "better" and "bp" overlap
    assert t.loc["better", "ci_low"] < t.loc["bp", "ci_high"]


def test_paired_comparison_refuses_unpaired_data():
    from labkit.analysis import paired_comparison
    import pandas as pd

    rows = pd.DataFrame([dict(K=1, rule="bp", accuracy=[0.5, 0.6]), dict(K=1, rule="fa", accuracy=[0.5])])
    with pytest.raises(ValueError, match="same tasks"):
        paired_comparison(rows, "bp", by=["K"])
    with pytest.raises(ValueError, match="baseline 'bio'"):
        paired_comparison(rows, "bio", by=["K"])


def test_online_study_gives_every_rule_the_same_networks_and_resumes_from_what_is_done():
    from labkit.analysis import online_study, online_study_table

    rules = {"FA": ("fa", np.eye(10)[[0]] * 0.01), "BP + Oja": ("bp", (np.eye(10)[0] * 0.01 + np.eye(10)[9] * 0.005)[None]),
             "frozen": ("bp", np.zeros((1, 10)))}
    kw = dict(depths=(2, 3), init_scales=(1.0, 3.0), width=8, trials=2, steps=(0, 10), n_samples=30)
    seen = []
    runs = online_study(rules, on_result=lambda r: seen.append(len(r)), **kw)
    assert len(runs) == 2 * 2 * 3 and seen == list(range(1, 13))
    for r in runs:
        assert r["steps"] == [0, 10, 30]
        assert np.asarray(r["weight_norm"]).shape == (2, 3, r["depth"] + 1)
        assert np.asarray(r["effective_rank"]).shape == (2, 3, r["depth"])
    by = {(r["init_scale"], r["depth"], r["rule"]): r for r in runs}
    for scale in (1.0, 3.0):
        for depth in (2, 3):
            start = {rule: np.asarray(by[(scale, depth, rule)]["accuracy"])[:, 0] for rule in rules}
            assert np.array_equal(start["FA"], start["BP + Oja"]) and np.array_equal(start["FA"], start["frozen"])
            frozen = np.asarray(by[(scale, depth, "frozen")]["weight_norm"])
            assert np.allclose(frozen[:, 0], frozen[:, -1])  # theta = 0 learns nothing
        # a larger init scale gives larger weights at the start
    assert (np.asarray(by[(3.0, 2, "FA")]["weight_norm"])[:, 0] > np.asarray(by[(1.0, 2, "FA")]["weight_norm"])[:, 0]).all()
    again = online_study(rules, done=runs[:5], **kw)
    assert again[:5] == runs[:5]
    assert json.dumps(again, sort_keys=True) == json.dumps(runs, sort_keys=True)  # deterministic
    table = online_study_table(runs)
    assert len(table) == 12 and (table["diverged"] == 0).all()
    assert table["ci_low"].le(table["accuracy"]).all() and table["accuracy"].le(table["ci_high"]).all()
