"""Claims about the feedback-pathway plug-ins (labkit.pathways).

* The registry finds every pathway module by itself; a new module is all a new pathway
  needs (proved by adding one to a copy of the package and meta-training with it).
* The three pathways added through the plug-in (sign-symmetry uSF and frSF, direct random
  target projection) form the teaching signals their equations say, checked entry by entry
  against loops written here.
* Their exact meta-gradient: the hand-derived adjoint equals autograd through the unrolled
  loop, and both equal central finite differences in float64. sign() has zero derivative
  almost everywhere, so the exact meta-gradient (adjoint and autograd alike) sends nothing
  through the signs; finite differences agree because no weight changes sign within the
  tiny perturbation (checked in the test, not assumed).
* The metrics know what each pathway has: a W vs B^T angle for sign-symmetry, none for DRTP.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit import metrics, pathways
from labkit.feedback import FEEDBACK_KINDS, backward, check_kind, init_feedback
from labkit.learner import Episodic, episode_loss, meta_gradient, online_train
from labkit.networks import BETA, forward, init_weights, xavier_bound
from labkit.rules import N_TERMS, make_rule

DT = torch.float64
SMALL = (12, 9, 7, 5)
TINY = (6, 5, 4, 3)
NEW = ["usf", "frsf", "drtp"]
ROOT = Path(__file__).resolve().parents[1]


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def make_episode(sizes, feedback, rule, T=2, N=6, Q=8, seed=0):
    g = gens(range(100 * seed, 100 * seed + T))
    Ws = init_weights(sizes, g, DT)
    Bs = init_feedback(feedback, sizes, g, DT)
    d = torch.Generator().manual_seed(10_000 + seed)
    x_train = torch.rand(T, N, sizes[0], generator=d, dtype=DT)
    y_train = torch.randint(sizes[-1], (T, N), generator=d)
    x_query = torch.rand(T, Q, sizes[0], generator=d, dtype=DT)
    y_query = torch.randint(sizes[-1], (T, Q), generator=d)
    return Episodic(Ws, Bs, feedback, make_rule(rule, len(sizes) - 1), x_train, y_train, x_query, y_query)


def make_theta(T, seed, theta0=0.3, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    th = scale * torch.randn(T, N_TERMS, generator=g, dtype=DT)
    th[:, 0] = theta0 * (1.0 + 0.5 * torch.rand(T, generator=g, dtype=DT))
    return th


# ------------------------------------------------------------------------- the registry


def test_the_registry_offers_the_papers_three_pathways_first_and_the_three_new_ones():
    assert pathways.names()[:3] == ("bp", "fa", "dfa")
    assert set(NEW) <= set(pathways.names())
    assert FEEDBACK_KINDS == pathways.names()
    for name in pathways.names():
        p = pathways.get(name)
        assert p.name == name and p.label and p.equation


def test_an_unknown_pathway_is_a_clear_error_listing_the_choices():
    with pytest.raises(ValueError, match=r"unknown feedback pathway 'xyz'; choose one of bp, fa, dfa"):
        check_kind("xyz")
    with pytest.raises(ValueError, match="unknown feedback pathway"):
        init_feedback("xyz", SMALL, gens([0]))


def test_which_pathways_draw_matrices_and_of_what_shape():
    sizes = SMALL
    L = len(sizes) - 1
    assert pathways.get("usf").matrix_shapes(sizes) == []  # needs only the current W
    assert pathways.get("frsf").matrix_shapes(sizes) == [(sizes[l - 1], sizes[l]) for l in range(1, L + 1)]
    assert pathways.get("drtp").matrix_shapes(sizes) == [(sizes[l], sizes[L]) for l in range(L)]
    Ms = init_feedback("frsf", sizes, gens([3, 4]), DT)
    assert all(M.shape == (2, *s) for M, s in zip(Ms, pathways.get("frsf").matrix_shapes(sizes)))
    assert all(bool((M >= 0).all()) for M in Ms)  # frSF stores the magnitudes |M|
    # the magnitudes are FA's draws, so the two pathways can be compared trial by trial
    Bs = init_feedback("fa", sizes, gens([3, 4]), DT)
    assert all(torch.equal(M, B.abs()) for M, B in zip(Ms, Bs))


def test_a_new_pathway_is_one_new_file(tmp_path):
    """Copy the package, add one module to labkit/pathways/, change nothing else: the
    command line offers it, meta-training runs with it and its results name it."""
    pkg = tmp_path / "labkit"
    shutil.copytree(ROOT / "labkit", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "pathways" / "halffa.py").write_text(
        '"""Feedback alignment at half strength (a test pathway)."""\n'
        "from . import Pathway, accumulate, register\n\n\n"
        "@register\n"
        "class HalfFA(Pathway):\n"
        '    name = "halffa"\n'
        '    label = "half-strength feedback alignment"\n'
        '    equation = "g_j = B_{j+1} e_{j+1} / 2"\n\n'
        "    def matrix_shapes(self, sizes):\n"
        "        return [(sizes[l - 1], sizes[l]) for l in range(1, len(sizes))]\n\n"
        "    def signal(self, j, Ws, Bs, es, target, mv, mtv):\n"
        "        return mv(Bs[j], es[j + 1]) * 0.5\n\n"
        "    def signal_adjoint(self, j, Ws, Bs, es, target, gbar, es_bar, mv, mtv):\n"
        "        accumulate(es_bar, j + 1, mtv(Bs[j], gbar) * 0.5)\n\n"
        "    def feedback_matrices(self, Ws, Bs):\n"
        "        return [B * 0.5 for B in Bs]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())"]
    helptext = subprocess.run(cli + ["discover", "--help"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert helptext.returncode == 0, helptext.stderr
    assert "halffa" in helptext.stdout
    out = tmp_path / "run"
    run = subprocess.run(
        cli + ["discover", "--rule", "bio", "--feedback", "halffa", "--trials", "1", "--episodes", "2",
               "--hidden", "8", "--K", "3", "--Q", "2", "--quiet", "--out", str(out)],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"feedback": "halffa"' in (out / "config.json").read_text()
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2
    header = history[0].split(",")
    row = dict(zip(header, history[-1].split(",")))
    assert math.isfinite(float(row["weight_angle_1"]))  # it declared its B, so the angle exists


# -------------------------------------------------------- the signals follow their equations


def reference_errors(Ws, Bs, ys, label, feedback, t):
    """e_0..e_L of trial t by loops over units, from the pathway's printed equation."""
    L = len(Ws)
    nL = Ws[-1].shape[1]
    onehot = [1.0 if k == int(label[t]) else 0.0 for k in range(nL)]
    e = {L: [float(ys[L][t, k]) - onehot[k] for k in range(nL)]}
    for j in range(L - 1, -1, -1):
        W = Ws[j][t]  # (n_{j+1}, n_j)
        n_j, n_next = W.shape[1], W.shape[0]
        if feedback == "usf":
            s = math.sqrt(2.0 / (n_j + n_next))
            g = [sum(s * math.copysign(1.0, float(W[k, i])) * e[j + 1][k] for k in range(n_next)) for i in range(n_j)]
        elif feedback == "frsf":
            M = Bs[j][t]  # (n_j, n_{j+1}): |M|
            g = [sum(abs(float(M[i, k])) * math.copysign(1.0, float(W[k, i])) * e[j + 1][k] for k in range(n_next))
                 for i in range(n_j)]
        else:  # drtp: D_j times the one-hot target
            D = Bs[j][t]  # (n_j, n_L)
            g = [sum(float(D[i, k]) * onehot[k] for k in range(nL)) for i in range(n_j)]
        e[j] = [g[i] * (1.0 - math.exp(-BETA * float(ys[j][t, i]))) for i in range(n_j)]
    return e


@pytest.mark.parametrize("feedback", NEW)
def test_teaching_signals_follow_the_pathways_equations_entry_by_entry(feedback):
    T = 2
    g = gens([51, 52])
    Ws = init_weights(TINY, g, DT)
    Bs = init_feedback(feedback, TINY, g, DT)
    x = torch.rand(T, TINY[0], generator=torch.Generator().manual_seed(5), dtype=DT)
    label = torch.tensor([0, 2])
    zs, ys = forward(Ws, x)
    target = torch.nn.functional.one_hot(label, TINY[-1]).to(DT)
    es = backward(feedback, Ws, Bs, ys, ys[-1] - target, target=target)
    for t in range(T):
        ref = reference_errors(Ws, Bs, ys, label, feedback, t)
        for j in range(len(Ws) + 1):
            torch.testing.assert_close(es[j][t], torch.tensor(ref[j], dtype=DT), rtol=1e-12, atol=1e-14)
    # the target is recovered from the output error when not given
    es2 = backward(feedback, Ws, Bs, ys, ys[-1] - target)
    for a, b in zip(es, es2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_drtp_hidden_signals_ignore_the_output_error_and_sign_symmetry_follows_the_current_signs():
    g = gens([7])
    Ws = init_weights(TINY, g, DT)
    x = torch.rand(1, TINY[0], generator=torch.Generator().manual_seed(1), dtype=DT)
    target = torch.nn.functional.one_hot(torch.tensor([1]), TINY[-1]).to(DT)
    _, ys = forward(Ws, x)
    D = init_feedback("drtp", TINY, g, DT)
    a = backward("drtp", Ws, D, ys, ys[-1] - target, target=target)
    b = backward("drtp", Ws, D, ys, 5.0 * (ys[-1] - target), target=target)  # another output error
    assert all(torch.equal(u, v) for u, v in zip(a[:-1], b[:-1]))
    # flipping the sign of the top layer's weights flips uSF's signal into the layer below
    flipped = Ws[:-1] + [-Ws[-1]]
    e_plus = backward("usf", Ws, [], ys, ys[-1] - target, target=target)
    e_minus = backward("usf", flipped, [], ys, ys[-1] - target, target=target)
    torch.testing.assert_close(e_minus[-2], -e_plus[-2])


# -------------------------------------------------------------------- exact meta-gradients


@pytest.mark.parametrize("feedback", NEW)
@pytest.mark.parametrize("rule", ["pool", "bio", "fa"])
def test_adjoint_meta_gradient_equals_autograd_through_the_unrolled_loop(rule, feedback):
    ep = make_episode(SMALL, feedback, rule, T=2, N=8, seed=3)
    theta = make_theta(2, seed=4)
    adj = meta_gradient(theta, ep, mode="adjoint")
    rev = meta_gradient(theta, ep, mode="reverse")
    torch.testing.assert_close(adj.loss, rev.loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(adj.grad, rev.grad, rtol=1e-9, atol=1e-12)
    assert torch.all(adj.grad[:, 0].abs() > 1e-6)


def sign_patterns(theta, ep, h):
    """The signs of every weight at every step of the episode, at theta + h and at theta - h."""
    out = []
    for sgn in (1.0, -1.0):
        th = theta.clone()
        th[:, list(ep.rule.terms)] += sgn * h
        signs = []
        with torch.no_grad():
            online_train(ep.Ws, ep.Bs, ep.feedback, ep.rule, th, ep.x_train, ep.y_train,
                         callback=lambda step, Ws: signs.append([torch.sign(W) for W in Ws]))
        out.append(signs)
    return out


@pytest.mark.parametrize("feedback", NEW)
@pytest.mark.parametrize("rule", ["pool", "bio"])
def test_meta_gradient_equals_central_finite_differences(rule, feedback):
    ep = make_episode(SMALL, feedback, rule, T=2, N=6, seed=1)
    theta = make_theta(2, seed=2)
    h = 1e-6
    if feedback in ("usf", "frsf"):
        # A weight crossing zero between theta - h and theta + h would make the loss jump (the
        # sign flips): then the finite difference is not a derivative. Make sure none does.
        plus, minus = sign_patterns(theta, ep, h)
        assert all(torch.equal(a, b) for sa, sb in zip(plus, minus) for a, b in zip(sa, sb))
    grad = meta_gradient(theta, ep, mode="adjoint").grad
    fd = torch.zeros_like(theta)
    with torch.no_grad():
        for r in ep.rule.terms:
            tp, tm = theta.clone(), theta.clone()
            tp[:, r] += h
            tm[:, r] -= h
            fd[:, r] = (episode_loss(tp, ep)[0] - episode_loss(tm, ep)[0]) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("feedback", NEW)
def test_kernel_form_first_layer_gives_the_dense_forms_meta_gradient(feedback, monkeypatch):
    import labkit.adjoint as adjoint

    ep = make_episode(SMALL, feedback, "fa", T=2, N=10, seed=5)
    theta = make_theta(2, seed=6)
    assert adjoint._kernel_first_layer(ep.rule.layer_terms[0], 10, 12, 9)
    kernel = meta_gradient(theta, ep, mode="adjoint")
    monkeypatch.setattr(adjoint, "_kernel_first_layer", lambda *a: False)
    dense = meta_gradient(theta, ep, mode="adjoint")
    torch.testing.assert_close(kernel.grad, dense.grad, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------ metrics


def test_weight_angles_exist_for_sign_symmetry_and_not_for_drtp():
    g = gens([1, 2])
    Ws = init_weights(SMALL, g, DT)
    L = len(Ws)
    usf = metrics.weight_angles(Ws, [], "usf")
    # W vs s sign(W): the angle between a vector and its own signs, below 90 degrees
    for l in range(L):
        W = Ws[l].reshape(2, -1)
        cos = W.abs().sum(-1) / (W.norm(dim=-1) * math.sqrt(W.shape[-1]))
        torch.testing.assert_close(usf[:, l], torch.rad2deg(torch.acos(cos)))
    Ms = init_feedback("frsf", SMALL, g, DT)
    frsf = metrics.weight_angles(Ws, Ms, "frsf")
    assert bool(((frsf > 0) & (frsf < 90)).all())
    assert bool(torch.isnan(metrics.weight_angles(Ws, init_feedback("drtp", SMALL, g, DT), "drtp")).all())


@pytest.mark.parametrize("feedback", NEW)
def test_alignment_angles_are_finite_for_the_new_pathways(feedback):
    ep = make_episode(SMALL, feedback, "bio", T=2, N=6, seed=2)
    alpha = metrics.alignment_angles(ep.Ws, ep.Bs, feedback, ep.x_query, ep.y_query)
    assert alpha.shape == (2, len(SMALL) - 2)
    assert bool(torch.isfinite(alpha).all()) and bool((alpha >= 0).all()) and bool((alpha <= 180).all())


def test_uniform_sign_symmetry_scale_is_the_layers_xavier_standard_deviation():
    g = gens([9])
    Ws = init_weights(SMALL, g, DT)
    Bt = pathways.get("usf").feedback_matrices(Ws, [])
    for W, B in zip(Ws, Bt):
        n_out, n_in = W.shape[1:]
        assert B.shape == (1, n_in, n_out)
        s = xavier_bound(n_out, n_in) / math.sqrt(3.0)  # std of U(-a, a)
        torch.testing.assert_close(B.abs(), torch.full_like(B, s))


# ---------------------------------------------------------------- end to end: evaluation


@pytest.mark.parametrize("feedback", NEW)
def test_a_rule_evaluates_on_fresh_tasks_under_each_new_pathway(feedback):
    from labkit.evaluation import evaluate_rule

    theta = torch.zeros(N_TERMS, dtype=DT)
    theta[0], theta[2], theta[9] = 5e-3, -3e-2, 3e-3
    accs = evaluate_rule("bio", theta.numpy(), feedback=feedback, hidden=(16, 12), K=4, Q=3, tasks=3)
    assert accs.shape == (3,)
    assert bool(((accs >= 0) & (accs <= 1)).all())
    # the same tasks again give the same numbers (seeded), and another pathway other numbers
    again = evaluate_rule("bio", theta.numpy(), feedback=feedback, hidden=(16, 12), K=4, Q=3, tasks=3)
    assert (accs == again).all()
