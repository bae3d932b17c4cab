"""Claims about the core of labkit: networks, feedback pathways, the plasticity pool,
the online learner with its meta-gradient, and the measurements (docs/architecture.md, "The science in one screen").

Everything runs in float64 on small networks so that equalities can be checked tightly.
References are written independently of the library: autograd on a plain network,
explicit loops over units, finite differences.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from labkit import metrics
from labkit.feedback import backward, check_kind, init_feedback
from labkit.learner import Episodic, episode_loss, meta_gradient, online_train
from labkit.networks import (
    BETA,
    TABLE1_SIZES,
    forward,
    init_weights,
    logits,
    softplus,
    softplus_deriv_from_output,
    xavier_bound,
    xavier_uniform,
)
from labkit.rules import N_TERMS, NAMED_RULES, USES_PRE_ERROR, fused_update, make_rule, pool_term

DT = torch.float64
SMALL = (12, 9, 7, 5)
TINY = (6, 5, 4, 3)


# ----------------------------------------------------------------------------- helpers


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def make_data(sizes, T, N, Q, seed):
    g = torch.Generator().manual_seed(10_000 + seed)
    n0, nL = sizes[0], sizes[-1]
    x_train = torch.rand(T, N, n0, generator=g, dtype=DT)
    y_train = torch.randint(nL, (T, N), generator=g)
    x_query = torch.rand(T, Q, n0, generator=g, dtype=DT)
    y_query = torch.randint(nL, (T, Q), generator=g)
    return x_train, y_train, x_query, y_query


def make_episode(sizes, feedback, rule, T=2, N=6, Q=8, seed=0):
    g = gens(range(100 * seed, 100 * seed + T))
    Ws = init_weights(sizes, g, DT)
    Bs = init_feedback(feedback, sizes, g, DT)
    return Episodic(Ws, Bs, feedback, make_rule(rule, len(sizes) - 1), *make_data(sizes, T, N, Q, seed))


def make_theta(T, seed, theta0=0.3, scale=0.02):
    """theta_0 of a usable learning rate, every other coefficient small but nonzero."""
    g = torch.Generator().manual_seed(seed)
    th = scale * torch.randn(T, N_TERMS, generator=g, dtype=DT)
    th[:, 0] = theta0 * (1.0 + 0.5 * torch.rand(T, generator=g, dtype=DT))
    return th


def slice_episode(ep: Episodic, i: int) -> Episodic:
    s = slice(i, i + 1)
    return Episodic(
        [W[s] for W in ep.Ws], [B[s] for B in ep.Bs], ep.feedback, ep.rule,
        ep.x_train[s], ep.y_train[s], ep.x_query[s], ep.y_query[s], ep.beta,
    )


def transposes(Ws):
    return [W.transpose(1, 2).clone() for W in Ws]


def signals(sizes, feedback, seed=0, T=2):
    """One sample per trial through a fresh network: (Ws, Bs, zs, ys, es) from labkit."""
    g = gens(range(50 + seed, 50 + seed + T))
    Ws = init_weights(sizes, g, DT)
    Bs = init_feedback(feedback, sizes, g, DT)
    x = torch.rand(T, sizes[0], generator=torch.Generator().manual_seed(seed), dtype=DT)
    label = torch.arange(T) % sizes[-1]
    zs, ys = forward(Ws, x)
    e_L = ys[-1] - torch.nn.functional.one_hot(label, sizes[-1]).to(DT)
    es = backward(feedback, Ws, Bs, ys, e_L, need_e0=True)
    return Ws, Bs, zs, ys, es, x, label


# ------------------------------------------ 1. backprop + rule {0} is SGD on cross-entropy


def autograd_sgd_step(Ws_trial, x, label, lr):
    """W - lr * dCE/dW on a plain network: softplus(beta=10) hidden, softmax + CE, no biases."""
    Ws = [W.detach().clone().requires_grad_(True) for W in Ws_trial]
    h = x
    for W in Ws[:-1]:
        z = W @ h
        h = torch.logaddexp(10.0 * z, torch.zeros_like(z)) / 10.0  # log(1 + exp(beta z)) / beta
    z = Ws[-1] @ h
    loss = torch.nn.functional.cross_entropy(z.unsqueeze(0), label.view(1))
    grads = torch.autograd.grad(loss, Ws)
    return [(W - lr * gW).detach() for W, gW in zip(Ws, grads)]


@pytest.mark.parametrize(
    "sizes",
    [(6, 4), SMALL, (78, 13, 7, 5), TABLE1_SIZES, (78, 17, 13, 10, 7, 5)],
    ids=["1-layer", "12-9-7-5", "table1-scaled-78-13-7-5", "table1-784-130-70-47", "paper-5-layer-scaled"],
)
def test_backprop_with_rule_0_is_exactly_an_sgd_step_on_cross_entropy(sizes):
    T, N = 3, 3
    L = len(sizes) - 1
    Ws = init_weights(sizes, gens([1, 2, 3]), DT)
    x, y, _, _ = make_data(sizes, T, N, 1, seed=len(sizes))
    theta = 0.7 * torch.randn(T, N_TERMS, generator=torch.Generator().manual_seed(4), dtype=DT)
    theta[:, 0] = torch.tensor([0.5, 0.05, 1e-3], dtype=DT)  # a different learning rate per trial
    # (terms 1..9 carry large garbage coefficients: rule {0} must ignore them)
    rule = make_rule("bp", L)
    assert rule.layer_terms == ((0,),) * L

    # one online step
    one = online_train(Ws, [], "bp", rule, theta, x[:, :1], y[:, :1])
    # and N successive steps, each the SGD step at the current weights
    many = online_train(Ws, [], "bp", rule, theta, x, y)
    for i in range(T):
        ref = [W[i] for W in Ws]
        for t in range(N):
            ref = autograd_sgd_step(ref, x[i, t], y[i, t], theta[i, 0])
            if t == 0:
                for l in range(L):
                    torch.testing.assert_close(one[l][i], ref[l], rtol=1e-12, atol=1e-13)
        for l in range(L):
            torch.testing.assert_close(many[l][i], ref[l], rtol=1e-12, atol=1e-13)
    # the step is not trivially zero
    assert all((one[l] - Ws[l]).abs().max() > 1e-8 for l in range(L))


# ---------------------------------- forward / backward signals follow the printed equations


@pytest.mark.parametrize("feedback", ["bp", "fa", "dfa"])
def test_forward_and_backward_signals_follow_the_printed_equations(feedback):
    Ws, Bs, zs, ys, es, x, label = signals(TINY, feedback)
    L = len(Ws)
    sig = lambda z: math.log1p(math.exp(BETA * z)) / BETA  # noqa: E731
    dsig = lambda z: 1.0 / (1.0 + math.exp(-BETA * z))  # noqa: E731  sigma'(z) from z
    for t in range(x.shape[0]):
        y = [float(v) for v in x[t]]
        z_all, y_all = [], [y]
        for l in range(L):
            W = Ws[l][t]
            z = [sum(float(W[j, k]) * y[k] for k in range(len(y))) for j in range(W.shape[0])]
            if l < L - 1:
                y = [sig(v) for v in z]
            else:
                m = max(z)
                ex = [math.exp(v - m) for v in z]
                y = [v / sum(ex) for v in ex]
            z_all.append(z)
            y_all.append(y)
        for l in range(L):
            torch.testing.assert_close(zs[l][t], torch.tensor(z_all[l], dtype=DT))
            torch.testing.assert_close(ys[l + 1][t], torch.tensor(y_all[l + 1], dtype=DT))
        # errors: e_L = softmax - onehot; e_l = (B_{l+1} e_{l+1}) * sigma'(z_l); e_0 synthetic
        e = {L: [y_all[L][j] - (1.0 if j == int(label[t]) else 0.0) for j in range(TINY[-1])]}
        for l in range(L - 1, -1, -1):
            if feedback == "bp":
                M, src = Ws[l][t].T, e[l + 1]  # B_{l+1} = W_{l+1}^T
            elif feedback == "fa":
                M, src = Bs[l][t], e[l + 1]  # B_{l+1}
            else:
                M, src = Bs[l][t], e[L]  # D_l, straight from the output
            back = [sum(float(M[k, j]) * src[j] for j in range(len(src))) for k in range(M.shape[0])]
            if l >= 1:
                e[l] = [b * dsig(zz) for b, zz in zip(back, z_all[l - 1])]
            else:  # synthetic input-layer error: (B_1 e_1) * (1 - exp(-beta y_0))
                e[0] = [b * (1.0 - math.exp(-BETA * yy)) for b, yy in zip(back, y_all[0])]
        for l in range(L + 1):
            torch.testing.assert_close(es[l][t], torch.tensor(e[l], dtype=DT))


def test_e0_is_skipped_only_when_not_needed():
    Ws, Bs, zs, ys, es, x, label = signals(TINY, "fa")
    e_L = es[-1]
    without = backward("fa", Ws, Bs, ys, e_L, need_e0=False)
    assert without[0] is None
    for l in range(1, len(Ws) + 1):
        torch.testing.assert_close(without[l], es[l], rtol=0, atol=0)


# ------------------------------------------------ 2. each pool term, element by element


def loop_term(r, W, y_pre, y_post, e_pre, e_post):
    """F^r for one trial, entry by entry, exactly as printed in docs/architecture.md."""
    n_post, n_pre = W.shape
    W = W.tolist()
    yq, yp, eq, ep = y_pre.tolist(), y_post.tolist(), e_pre.tolist(), e_post.tolist()
    # scalar sums over units, from their printed definitions
    sum_y_post = sum(yp)  # 1^T y_l
    yWe = sum(yp[i] * W[i][m] * eq[m] for i in range(n_post) for m in range(n_pre))  # y_l^T W_l e_{l-1}
    eWy = sum(ep[i] * W[i][m] * yq[m] for i in range(n_post) for m in range(n_pre))  # e_l^T W_l y_{l-1}
    F = [[0.0] * n_pre for _ in range(n_post)]
    for j in range(n_post):
        for k in range(n_pre):
            F[j][k] = {
                0: lambda: -ep[j] * yq[k],
                1: lambda: -yp[j] * eq[k],
                2: lambda: -ep[j] * eq[k],
                3: lambda: -W[j][k],
                4: lambda: -1.0 * eq[k],
                5: lambda: -sum_y_post * ep[j] * yq[k],
                6: lambda: -yWe * yp[j] * eq[k],
                7: lambda: -yWe * ep[j] * yq[k],
                8: lambda: -eWy * yp[j] * eq[k],
                9: lambda: yp[j] * yq[k] - sum(yp[j] * yp[i] * W[i][k] for i in range(n_post)),
            }[r]()
    return torch.tensor(F, dtype=DT)


@pytest.mark.parametrize("r", range(N_TERMS))
def test_pool_term_matches_the_printed_equation_entry_by_entry_in_every_layer(r):
    Ws, Bs, zs, ys, es, x, label = signals(TINY, "fa", seed=r)
    L = len(Ws)
    for l in range(L):  # layer 1 uses the synthetic e_0; layer L uses y_L = softmax(z_L)
        got = pool_term(r, Ws[l], ys[l], ys[l + 1], es[l], es[l + 1])
        assert got.shape == Ws[l].shape
        for t in range(got.shape[0]):
            ref = loop_term(r, Ws[l][t], ys[l][t], ys[l + 1][t], es[l][t], es[l + 1][t])
            torch.testing.assert_close(got[t], ref, rtol=1e-12, atol=1e-14)
            assert ref.abs().max() > 0
    torch.testing.assert_close(ys[L].sum(-1), torch.ones(x.shape[0], dtype=DT))  # last y_post is softmax


def reference_update(theta, terms, W, y_pre, y_post, e_pre, e_post):
    out = W.clone()
    for r in terms:
        out = out + theta[:, r, None, None] * pool_term(r, W, y_pre, y_post, e_pre, e_post)
    return out


def subsets_to_check():
    rnd = random.Random(0)
    subsets = [(r,) for r in range(N_TERMS)]
    subsets += [NAMED_RULES[k] for k in ("fa", "ehebb", "oja", "bio", "pool")]
    subsets += [tuple(sorted(rnd.sample(range(N_TERMS), rnd.randint(2, 9)))) for _ in range(12)]
    return subsets


@pytest.mark.parametrize("feedback", ["fa", "bp", "dfa"])
def test_fused_update_equals_W_plus_sum_of_theta_r_times_pool_terms(feedback):
    Ws, Bs, zs, ys, es, x, label = signals(TINY, feedback, seed=3)
    T = x.shape[0]
    for n, terms in enumerate(subsets_to_check()):
        theta = torch.randn(T, N_TERMS, generator=torch.Generator().manual_seed(n), dtype=DT)
        for l in range(len(Ws)):
            got = fused_update(theta, terms, Ws[l], ys[l], ys[l + 1], es[l], es[l + 1], zs[l])
            ref = reference_update(theta, terms, Ws[l], ys[l], ys[l + 1], es[l], es[l + 1])
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13, msg=f"terms {terms}, layer {l + 1}")


def test_fused_update_without_pre_synaptic_error_terms_needs_no_e0():
    Ws, Bs, zs, ys, es, x, label = signals(TINY, "fa", seed=5)
    theta = torch.randn(x.shape[0], N_TERMS, generator=torch.Generator().manual_seed(0), dtype=DT)
    terms = tuple(r for r in range(N_TERMS) if r not in USES_PRE_ERROR)
    assert terms == (0, 3, 5, 9)
    got = fused_update(theta, terms, Ws[0], ys[0], ys[1], None, es[1], zs[0])
    torch.testing.assert_close(got, reference_update(theta, terms, Ws[0], ys[0], ys[1], es[0], es[1]))


@pytest.mark.parametrize(
    "per_layer",
    [[[0, 2], [0], [0, 9]], [[0, 1, 4], list(range(10)), [3, 8]], [[0], [0, 2], [0, 2, 9]]],
)
def test_one_online_step_applies_in_each_layer_exactly_that_layers_terms(per_layer):
    Ws, Bs, zs, ys, es, x, label = signals(TINY, "fa", seed=7)
    theta = make_theta(x.shape[0], seed=1)
    rule = make_rule(per_layer, len(Ws))
    new = online_train(Ws, Bs, "fa", rule, theta, x.unsqueeze(1), label.unsqueeze(1))
    for l, terms in enumerate(per_layer):
        ref = reference_update(theta, terms, Ws[l], ys[l], ys[l + 1], es[l], es[l + 1])
        torch.testing.assert_close(new[l], ref, rtol=1e-12, atol=1e-13)


def test_online_train_does_not_modify_its_inputs():
    ep = make_episode(SMALL, "fa", "pool")
    before = [W.clone() for W in ep.Ws]
    online_train(ep.Ws, ep.Bs, "fa", ep.rule, make_theta(2, 0), ep.x_train, ep.y_train)
    for W, W0 in zip(ep.Ws, before):
        assert torch.equal(W, W0)


# ------------------------------------------- 3. meta-gradient = central finite differences


@pytest.mark.parametrize("mode", ["reverse", "adjoint"])
@pytest.mark.parametrize("feedback", ["fa", "bp", "dfa"])
@pytest.mark.parametrize("rule", ["pool", "bio"])
def test_meta_gradient_matches_central_finite_differences(rule, feedback, mode):
    ep = make_episode(SMALL, feedback, rule, T=2, N=6, seed=1)
    theta = make_theta(2, seed=2)
    res = meta_gradient(theta, ep, mode=mode)
    grad = res[2]
    active = ep.rule.terms
    h = 1e-5
    fd = torch.zeros_like(theta)
    with torch.no_grad():
        for r in active:
            # moving theta_r of every trial at once: each trial's loss sees only its own
            # theta (checked separately below), so column r of the FD is per-trial
            tp, tm = theta.clone(), theta.clone()
            tp[:, r] += h
            tm[:, r] -= h
            fd[:, r] = (episode_loss(tp, ep)[0] - episode_loss(tm, ep)[0]) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)  # inactive terms: FD 0, grad must be 0
    assert torch.all(grad[:, 0].abs() > 1e-4)
    # the loss it reports is the query loss after adaptation
    torch.testing.assert_close(res[0], episode_loss(theta, ep)[0].detach())


# ---------------------------------------------------- 4. forward mode = reverse mode


@pytest.mark.parametrize("feedback", ["fa", "dfa"])
@pytest.mark.parametrize("rule", ["pool", "bio", [[0, 2], [0], [0, 9]]])
def test_forward_mode_meta_gradient_equals_reverse_mode(rule, feedback):
    ep = make_episode(SMALL, feedback, rule, T=2, N=6, seed=2)
    theta = make_theta(2, seed=3)
    rev = meta_gradient(theta, ep, mode="reverse")
    fwd = meta_gradient(theta, ep, mode="forward")
    torch.testing.assert_close(fwd[0], rev[0], rtol=1e-12, atol=1e-12)  # loss
    torch.testing.assert_close(fwd[1], rev[1])  # accuracy
    torch.testing.assert_close(fwd[2], rev[2], rtol=1e-9, atol=1e-12)  # grad


def test_meta_gradient_rejects_an_unknown_mode():
    ep = make_episode(SMALL, "fa", "bio", T=1, N=2)
    with pytest.raises(ValueError, match="mode"):
        meta_gradient(make_theta(1, 0), ep, mode="sideways")


# ------------------------------------------------------------ 5. alignment and weight angles


def test_alignment_and_weight_angles_are_zero_under_backprop():
    ep = make_episode(SMALL, "bp", "bp", T=3, Q=20)
    ang = metrics.alignment_angles(ep.Ws, [], "bp", ep.x_query, ep.y_query)
    assert ang.shape == (3, len(SMALL) - 2)
    assert ang.abs().max() < 1e-5
    assert torch.equal(metrics.weight_angles(ep.Ws, [], "bp"), torch.zeros(3, len(SMALL) - 1, dtype=DT))


def test_alignment_angle_is_the_angle_between_batch_averaged_errors():
    ep = make_episode(SMALL, "fa", "fa", T=2, Q=20, seed=3)
    ang = metrics.alignment_angles(ep.Ws, ep.Bs, "fa", ep.x_query, ep.y_query)
    _, ys = forward(ep.Ws, ep.x_query)
    e_L = ys[-1] - torch.nn.functional.one_hot(ep.y_query, SMALL[-1]).to(DT)
    L = len(ep.Ws)
    for t in range(2):
        for l in range(1, L):
            ef, eb = e_L[t], e_L[t]
            for m in range(L - 1, l - 1, -1):  # propagate e_L down to layer l both ways
                d = 1 - torch.exp(-BETA * ys[m][t])
                ef = (ef @ ep.Bs[m][t].T) * d
                eb = (eb @ ep.Ws[m][t]) * d
            a, b = ef.mean(0), eb.mean(0)
            ref = math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))
            assert ang[t, l - 1].item() == pytest.approx(ref, abs=1e-9)
    assert ang.min() > 1.0  # random feedback is genuinely misaligned


def test_weight_angles_under_fa_are_angles_between_W_and_B_transpose():
    ep = make_episode(SMALL, "fa", "fa", T=2)
    ang = metrics.weight_angles(ep.Ws, ep.Bs, "fa")
    for t in range(2):
        for l, (W, B) in enumerate(zip(ep.Ws, ep.Bs)):
            a, b = W[t].flatten(), B[t].T.flatten()
            ref = math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))
            assert ang[t, l].item() == pytest.approx(ref, abs=1e-9)
    assert torch.isnan(metrics.weight_angles(ep.Ws, init_feedback("dfa", SMALL, gens([0, 1]), DT), "dfa")).all()


def test_feedback_alignment_with_B_equal_W_transpose_is_backprop():
    ep = make_episode(SMALL, "fa", "pool", T=2, N=5, Q=20, seed=4)
    theta = make_theta(2, seed=5)
    Bs = transposes(ep.Ws)  # B_l = W_l^T, set by hand
    assert metrics.alignment_angles(ep.Ws, Bs, "fa", ep.x_query, ep.y_query).abs().max() < 1e-5
    assert metrics.weight_angles(ep.Ws, Bs, "fa").abs().max() < 1e-5

    bp_path = online_train(ep.Ws, [], "bp", ep.rule, theta, ep.x_train, ep.y_train)
    # FA whose B is reset to the current W^T before every sample follows the same trajectory
    Ws = ep.Ws
    for t in range(ep.x_train.shape[1]):
        sl = slice(t, t + 1)
        Ws = online_train(Ws, transposes(Ws), "fa", ep.rule, theta, ep.x_train[:, sl], ep.y_train[:, sl])
        ref = online_train(ep.Ws, [], "bp", ep.rule, theta, ep.x_train[:, : t + 1], ep.y_train[:, : t + 1])
        for W, R in zip(Ws, ref):
            torch.testing.assert_close(W, R, rtol=1e-12, atol=1e-13)
    for W, R in zip(Ws, bp_path):
        torch.testing.assert_close(W, R, rtol=1e-12, atol=1e-13)
    # ... while B frozen at the initial W^T agrees for the first sample only
    frozen = online_train(ep.Ws, Bs, "fa", ep.rule, theta, ep.x_train[:, :1], ep.y_train[:, :1])
    first = online_train(ep.Ws, [], "bp", ep.rule, theta, ep.x_train[:, :1], ep.y_train[:, :1])
    for W, R in zip(frozen, first):
        torch.testing.assert_close(W, R, rtol=1e-12, atol=1e-13)
    frozen = online_train(ep.Ws, Bs, "fa", ep.rule, theta, ep.x_train, ep.y_train)
    assert max((W - R).abs().max() for W, R in zip(frozen, bp_path)) > 1e-6


# ------------------------------------------------ 6./7. batched trials and trial independence


@pytest.mark.parametrize("mode", ["adjoint", "reverse"])
@pytest.mark.parametrize("feedback,rule", [("fa", "pool"), ("dfa", "bio"), ("bp", "bp")])
def test_batched_trials_give_the_same_numbers_as_trials_run_one_by_one(feedback, rule, mode):
    ep = make_episode(SMALL, feedback, rule, T=3, N=6, seed=6)
    theta = make_theta(3, seed=7)
    together = meta_gradient(theta, ep, mode=mode)
    for i in range(3):
        alone = meta_gradient(theta[i : i + 1], slice_episode(ep, i), mode=mode)
        torch.testing.assert_close(alone[0], together[0][i : i + 1], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(alone[1], together[1][i : i + 1])
        torch.testing.assert_close(alone[2], together[2][i : i + 1], rtol=1e-10, atol=1e-13)


def test_init_weights_of_a_trial_do_not_depend_on_the_trials_beside_it():
    alone_W = init_weights(SMALL, gens([7]), DT)
    alone_B = init_feedback("fa", SMALL, gens([7]), DT)
    crowd_W = init_weights(SMALL, gens([1, 7, 3]), DT)
    crowd_B = init_feedback("fa", SMALL, gens([1, 7, 3]), DT)
    for a, c in zip(alone_W + alone_B, crowd_W + crowd_B):
        assert torch.equal(a[0], c[1])
    assert not torch.equal(crowd_W[0][0], crowd_W[0][1])


def test_the_gradient_of_trial_i_touches_only_theta_i():
    T = 3
    ep = make_episode(SMALL, "fa", "pool", T=T, N=5, seed=8)
    th = make_theta(T, seed=9).requires_grad_(True)
    loss = episode_loss(th, ep)[0]
    for i in range(T):
        (g,) = torch.autograd.grad(loss[i], th, retain_graph=True)
        others = torch.cat([g[:i], g[i + 1 :]])
        assert torch.all(others == 0), f"trial {i}'s loss reaches other trials' theta"
        assert torch.all(g[i].abs() > 0)


def test_changing_one_trials_theta_leaves_the_other_trials_unchanged():
    T = 3
    ep = make_episode(SMALL, "dfa", "pool", T=T, N=5, seed=9)
    theta = make_theta(T, seed=10)
    base = episode_loss(theta, ep)[0]
    moved = theta.clone()
    moved[1] *= 3.0
    after = episode_loss(moved, ep)[0]
    assert torch.equal(after[[0, 2]], base[[0, 2]])
    assert after[1] != base[1]


# ------------------------------------------------------- 8. orthonormality and DFA errors


def orthonormal_rows(n, m, seed):
    A = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=DT)
    Q, _ = torch.linalg.qr(A)  # (m, n) with orthonormal columns
    return Q.T.contiguous()  # (n, m): W W^T = I


def test_orthonormality_is_zero_for_orthonormal_weights_in_the_linear_regime():
    n0, n1, n2 = 8, 6, 4
    W1 = orthonormal_rows(n1, n0, 0)
    W2 = orthonormal_rows(n2, n1, 1)
    torch.testing.assert_close(W1 @ W1.T, torch.eye(n1, dtype=DT))
    # inputs chosen so that z_1 = W_1 x is large and positive: softplus is linear there
    z_target = 3.0 + torch.rand(2, 5, n1, generator=torch.Generator().manual_seed(2), dtype=DT)
    x = z_target @ W1  # W_1 x = z_target
    Ws = [W1.expand(2, -1, -1).contiguous(), W2.expand(2, -1, -1).contiguous()]
    E = metrics.orthonormality(Ws, x)
    assert E.shape == (2, 2)
    assert E[:, 0].max() < 1e-20
    # the same layer scaled by 2 is not orthonormal, and E_1 sees it
    E2 = metrics.orthonormality([2 * Ws[0], Ws[1]], x / 2)
    assert E2[:, 0].min() > 1.0


def test_orthonormality_is_the_printed_residual_and_reduces_to_I_minus_WWt_when_linear():
    ep = make_episode(SMALL, "fa", "fa", T=2, Q=7)
    E = metrics.orthonormality(ep.Ws, ep.x_query)
    zs, ys = forward(ep.Ws, ep.x_query)
    for l, W in enumerate(ep.Ws):
        for t in range(2):
            resid = zs[l][t] - ys[l + 1][t] @ (W[t] @ W[t].T).T  # z_l - W W^T y_l, per sample
            assert E[t, l].item() == pytest.approx(float(resid.pow(2).sum(-1).mean()), rel=1e-12)
    # linear regime: large positive z makes y = z, so E = || (I - W W^T) z ||^2
    x = 50.0 + torch.rand(1, 4, SMALL[0], dtype=DT, generator=torch.Generator().manual_seed(0))
    W_pos = ep.Ws[0][:1].abs()  # all-positive weights and large inputs: every z is large and positive
    z = x @ W_pos[0].T
    assert z.min() > 3.0
    E1 = metrics.orthonormality([W_pos, ep.Ws[1][:1]], x)[0, 0]
    P = torch.eye(SMALL[1], dtype=DT) - W_pos[0] @ W_pos[0].T
    ref = (z @ P.T).pow(2).sum(-1).mean()
    assert E1.item() == pytest.approx(ref.item(), rel=1e-10)


def test_dfa_errors_are_the_output_error_sent_straight_to_each_layer():
    Ws, Ds, zs, ys, es, x, label = signals(SMALL, "dfa", seed=11)
    L = len(Ws)
    assert [tuple(D.shape[1:]) for D in Ds] == [(SMALL[l], SMALL[-1]) for l in range(L)]
    for l in range(1, L):
        z = zs[l - 1].detach().clone().requires_grad_(True)
        (dsig,) = torch.autograd.grad(softplus(z).sum(), z)  # sigma'(z_l) by autograd
        ref = torch.einsum("tij,tj->ti", Ds[l], es[L]) * dsig
        torch.testing.assert_close(es[l], ref, rtol=1e-12, atol=1e-14)
    # perturbing D_l changes e_l only: no chain through the layers above
    Ds2 = [D.clone() for D in Ds]
    Ds2[L - 1] = Ds2[L - 1] + torch.rand(Ds2[L - 1].shape, dtype=DT, generator=torch.Generator().manual_seed(0))
    es2 = backward("dfa", Ws, Ds2, ys, es[L], need_e0=True)
    assert not torch.allclose(es2[L - 1], es[L - 1])
    for l in range(0, L - 1):
        torch.testing.assert_close(es2[l], es[l], rtol=0, atol=0)


# --------------------------------------------------------------------------- 9. networks


def test_softplus_derivative_read_from_the_output_equals_autograd():
    # beta z from -60 to 60: both sides of any linear cut-off the implementation may use
    z = torch.linspace(-6.0, 6.0, 1201, dtype=DT).requires_grad_(True)
    y = softplus(z)
    (dz,) = torch.autograd.grad(y.sum(), z)
    torch.testing.assert_close(softplus_deriv_from_output(y.detach()), dz, rtol=1e-14, atol=1e-300)
    exact = torch.logaddexp(BETA * z.detach(), torch.zeros_like(z)) / BETA
    torch.testing.assert_close(y.detach(), exact, rtol=1e-14, atol=1e-300)
    torch.testing.assert_close(dz, torch.sigmoid(BETA * z.detach()), rtol=1e-14, atol=1e-300)


def test_xavier_bound_and_uniform_draws():
    assert xavier_bound(170, 784) == pytest.approx(math.sqrt(6.0 / (784 + 170)))
    assert xavier_bound(3, 5) == xavier_bound(5, 3)
    W = xavier_uniform((300, 200), torch.Generator().manual_seed(0), DT)
    a = math.sqrt(6.0 / 500)
    assert W.shape == (300, 200) and W.dtype == DT
    assert W.abs().max() <= a
    assert W.max() > 0.99 * a and W.min() < -0.99 * a
    assert W.var().item() == pytest.approx(a * a / 3, rel=0.02)  # var of U(-a, a)
    assert abs(W.mean().item()) < 0.01 * a


def test_init_shapes_follow_the_conventions():
    g = gens([0, 1])
    Ws = init_weights(SMALL, g, DT)
    assert [tuple(W.shape) for W in Ws] == [(2, SMALL[l], SMALL[l - 1]) for l in range(1, 4)]
    Bs = init_feedback("fa", SMALL, g, DT)
    assert [tuple(B.shape) for B in Bs] == [(2, SMALL[l - 1], SMALL[l]) for l in range(1, 4)]
    assert init_feedback("bp", SMALL, g, DT) == []
    with pytest.raises(ValueError, match="unknown feedback"):
        init_feedback("kp", SMALL, g, DT)
    with pytest.raises(ValueError, match="unknown feedback"):
        check_kind("BP ")


def test_forward_batch_and_single_sample_agree_and_logits_is_z_L():
    ep = make_episode(SMALL, "fa", "fa", T=2, Q=4)
    zs, ys = forward(ep.Ws, ep.x_query)
    torch.testing.assert_close(logits(ep.Ws, ep.x_query), zs[-1], rtol=0, atol=0)
    for n in range(4):
        zs1, ys1 = forward(ep.Ws, ep.x_query[:, n])
        for a, b in zip(zs1, zs):
            torch.testing.assert_close(a, b[:, n])
        for a, b in zip(ys1, ys):
            torch.testing.assert_close(a, b[:, n])
    loss = metrics.query_loss(ep.Ws, ep.x_query, ep.y_query)
    ref = torch.stack([torch.nn.functional.cross_entropy(zs[-1][t], ep.y_query[t]) for t in range(2)])
    torch.testing.assert_close(loss, ref)
    l2, acc = metrics.query_loss_and_accuracy(ep.Ws, ep.x_query, ep.y_query)
    torch.testing.assert_close(l2, ref)
    torch.testing.assert_close(acc, (zs[-1].argmax(-1) == ep.y_query).to(DT).mean(-1))


# ------------------------------------------------------------------------- 10. make_rule


@pytest.mark.parametrize("name", list(NAMED_RULES))
def test_named_rules_have_their_paper_terms_in_every_layer(name):
    paper = {"fa": (0,), "bp": (0,), "dfa": (0,), "ehebb": (0, 2), "oja": (0, 9), "bio": (0, 2, 9),
             "pool": tuple(range(10))}
    rule = make_rule(name, 5)
    assert rule.layer_terms == (paper[name],) * 5
    assert rule.terms == paper[name]
    assert rule.name == name
    assert make_rule(name.upper(), 3).layer_terms == (paper[name],) * 3


def test_term_lists_are_parsed_sorted_and_deduplicated():
    assert make_rule("0,2,9", 4).layer_terms == ((0, 2, 9),) * 4
    assert make_rule(" 9, 0 ,2 ", 4).layer_terms == ((0, 2, 9),) * 4
    assert make_rule([9, 0, 0], 2).layer_terms == ((0, 9),) * 2
    assert make_rule([0, 2, 9], 3).name == "bio"
    assert make_rule("0,2", 3).name == "ehebb"
    assert make_rule([0, 3], 3).name == "custom"
    m = make_rule("3,5", 2).mask()
    assert m.shape == (2, N_TERMS) and m.sum() == 4 and bool(m[:, 3].all()) and bool(m[:, 5].all())


def test_per_layer_rules_as_in_table_1():
    rule = make_rule([[0, 2], [0], [0, 9]], 3)
    assert rule.layer_terms == ((0, 2), (0,), (0, 9))
    assert rule.terms == (0, 2, 9)
    assert rule.n_layers == 3
    expected = torch.zeros(3, N_TERMS, dtype=torch.bool)
    expected[0, [0, 2]] = True
    expected[1, 0] = True
    expected[2, [0, 9]] = True
    assert torch.equal(rule.mask(), expected)
    assert make_rule("0,2/0/0,9", 3) == rule  # the command line's spelling, layers separated by '/'
    assert make_rule(" 2,0 / 0 / 9,0 ", 3).layer_terms == rule.layer_terms


@pytest.mark.parametrize(
    "spec,n_layers,match",
    [
        ("0,10", 3, r"0\.\.9"),
        ([0, -1], 3, r"0\.\.9"),
        ([12], 3, r"0\.\.9"),
        ("hebbian", 3, "unknown rule"),
        ("0;2", 3, "unknown rule"),
        ("", 3, "at least one term"),
        ([], 3, "at least one term"),
        ([[0, 2], [0]], 3, "2 entries but the network has 3"),
        ([[0], [0], [0], [0]], 3, "4 entries but the network has 3"),
        ([[0, 2], [0, 11], [0]], 3, r"0\.\.9"),
        ([[0, 2], [], [0]], 3, "at least one term"),
        ("0,2/0", 3, "2 entries but the network has 3"),
        ("0,2/x/0", 3, "layers separated by '/'"),
        ("0,2//0", 3, "at least one term"),
    ],
)
def test_make_rule_rejects_bad_specs_with_a_clear_value_error(spec, n_layers, match):
    with pytest.raises(ValueError, match=match):
        make_rule(spec, n_layers)


def test_online_train_and_pool_term_reject_mismatched_input():
    ep = make_episode(SMALL, "fa", "bio")
    with pytest.raises(ValueError, match="rule has 2 layers but the network has 3"):
        online_train(ep.Ws, ep.Bs, "fa", make_rule("bio", 2), make_theta(2, 0), ep.x_train, ep.y_train)
    Ws, Bs, zs, ys, es, x, label = signals(TINY, "fa")
    with pytest.raises(ValueError, match="0..9"):
        pool_term(10, Ws[0], ys[0], ys[1], es[0], es[1])
