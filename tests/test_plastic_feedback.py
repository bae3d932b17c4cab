"""Plastic feedback matrices (docs/plastic-feedback.md): B_l <- B_l + sum_s phi_s G^s after every
sample, beside the forward rule. The terms against loops over units written from their printed
equations; the fused update against the sum of terms; the inner loop against a step written
out by hand; the meta-gradient (theta and phi) of autograd against central finite differences,
forward mode and the hand-derived adjoint; without plastic feedback nothing changes, bit for
bit; Kolen-Pollack aligns B^T with W; the refusals.

float64 on small networks throughout.
"""
from __future__ import annotations

import pytest
import torch

from labkit import metrics
from labkit.feedback import backward, check_plastic_feedback, init_feedback, plastic_feedback_allowed
from labkit.feedback_terms import (
    B_DECAY, B_EHEBB, B_OJA, FEEDBACK_TERMS, FEEDBACK_USES_PRE_ERROR, KP, N_FEEDBACK_TERMS, NAMED_FEEDBACK_RULES,
    make_feedback_terms,
)
from labkit.learner import Episodic, episode_loss, meta_gradient, online_train, online_train_plastic
from labkit.networks import forward, init_weights
from labkit.rules import N_TERMS, feedback_term, fused_feedback_update, make_rule, pool_term
from labkit.terms import TERMS

DT = torch.float64
TWO_HIDDEN = (12, 9, 7, 5)
THREE_HIDDEN = (12, 9, 8, 7, 5)
TINY = (6, 5, 4, 3)
ALL = tuple(range(N_FEEDBACK_TERMS))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def episode(sizes, rule, feedback_terms=(), feedback="fa", T=2, N=6, Q=8, seed=0):
    g = gens(range(100 * seed, 100 * seed + T))
    Ws = init_weights(sizes, g, DT)
    Bs = init_feedback(feedback, sizes, g, DT)
    d = torch.Generator().manual_seed(7 + seed)
    n0, nL = sizes[0], sizes[-1]
    return Episodic(
        Ws, Bs, feedback, make_rule(rule, len(sizes) - 1),
        torch.rand(T, N, n0, generator=d, dtype=DT), torch.randint(nL, (T, N), generator=d),
        torch.rand(T, Q, n0, generator=d, dtype=DT), torch.randint(nL, (T, Q), generator=d),
        feedback_terms=feedback_terms,
    )


def theta_for(T, seed):
    th = 0.02 * torch.randn(T, N_TERMS, generator=torch.Generator().manual_seed(seed), dtype=DT)
    th[:, 0] = 0.3
    return th


def phi_for(T, seed, scale=0.05):
    """Every feedback coefficient nonzero; a Kolen-Pollack rate like theta_0's."""
    ph = scale * torch.randn(T, N_FEEDBACK_TERMS, generator=torch.Generator().manual_seed(seed), dtype=DT)
    ph[:, KP] = 0.2 + 0.1 * torch.rand(T, generator=torch.Generator().manual_seed(seed + 1), dtype=DT)
    return ph


def signals(sizes, seed=0, T=2):
    """One sample per trial through a fresh FA network: (Ws, Bs, zs, ys, es) with e_0."""
    g = gens(range(50 + seed, 50 + seed + T))
    Ws = init_weights(sizes, g, DT)
    Bs = init_feedback("fa", sizes, g, DT)
    x = torch.rand(T, sizes[0], generator=torch.Generator().manual_seed(seed), dtype=DT)
    label = torch.arange(T) % sizes[-1]
    zs, ys = forward(Ws, x)
    e_L = ys[-1] - torch.nn.functional.one_hot(label, sizes[-1]).to(DT)
    es = backward("fa", Ws, Bs, ys, e_L, need_e0=True)
    return Ws, Bs, zs, ys, es, x, label


# ------------------------------------------------------------------------- the term table


def test_the_feedback_term_table_is_numbered_named_and_mirrors_forward_terms():
    assert [t.index for t in FEEDBACK_TERMS] == list(range(N_FEEDBACK_TERMS))
    assert len({t.name for t in FEEDBACK_TERMS}) == N_FEEDBACK_TERMS
    assert (KP, B_DECAY, B_EHEBB, B_OJA) == (0, 1, 2, 3)
    assert [FEEDBACK_TERMS[s].mirrors for s in ALL] == [0, 3, 2, 9]
    for t in FEEDBACK_TERMS:
        assert t.equation and t.latex.startswith("$") and t.slider[0] < t.slider[1]
        # a mirror reads the pre-synaptic error exactly when its forward term does
        assert t.reads_pre_error == TERMS[t.mirrors].reads_pre_error
    assert FEEDBACK_USES_PRE_ERROR == {B_EHEBB}
    assert NAMED_FEEDBACK_RULES["kp"] == (KP, B_DECAY)


@pytest.mark.parametrize("spec, expected", [
    ("kp", (0, 1)), ("KP", (0, 1)), ("pool", ALL), ("", ()), ("none", ()), ((), ()), ([3, 0, 0], (0, 3)),
    ("2,0", (0, 2)), ("Kolen-Pollack, feedback decay", (0, 1)), ("oja", (3,)), ("ehebb", (2,)),
])
def test_feedback_terms_are_parsed_sorted_and_deduplicated(spec, expected):
    assert make_feedback_terms(spec) == expected


@pytest.mark.parametrize("spec", ["hebbian", "0,7", [4], [-1], "1,x"])
def test_an_unknown_feedback_term_is_a_value_error_naming_the_choices(spec):
    with pytest.raises(ValueError, match="Kolen-Pollack"):
        make_feedback_terms(spec)


# ---------------------------------------------------------- 1. terms: reference and fused


def loop_feedback_term(s, B, y_pre, y_post, e_pre, e_post):
    """G^s for one trial, entry by entry, from the printed equations (B: n_pre x n_post)."""
    n_pre, n_post = B.shape
    B = B.tolist()
    yq, yp, eq, ep = y_pre.tolist(), y_post.tolist(), e_pre.tolist(), e_post.tolist()
    G = [[0.0] * n_post for _ in range(n_pre)]
    for m in range(n_pre):
        for j in range(n_post):
            G[m][j] = {
                0: lambda: -yq[m] * ep[j],
                1: lambda: -B[m][j],
                2: lambda: -eq[m] * ep[j],
                3: lambda: yq[m] * yp[j] - sum(B[m][i] * yp[i] * yp[j] for i in range(n_post)),
            }[s]()
    return torch.tensor(G, dtype=DT)


@pytest.mark.parametrize("s", ALL)
def test_feedback_term_matches_the_printed_equation_entry_by_entry_in_every_layer(s):
    Ws, Bs, zs, ys, es, x, label = signals(TINY, seed=s)
    for j in range(len(Bs)):  # B_1 reads the synthetic e_0; B_L the softmax output
        got = feedback_term(s, Bs[j], ys[j], ys[j + 1], es[j], es[j + 1])
        assert got.shape == Bs[j].shape
        for t in range(got.shape[0]):
            ref = loop_feedback_term(s, Bs[j][t], ys[j][t], ys[j + 1][t], es[j][t], es[j + 1][t])
            torch.testing.assert_close(got[t], ref, rtol=1e-12, atol=1e-14)
            assert ref.abs().max() > 0


def test_each_feedback_term_is_its_forward_mirror_with_W_read_as_B_transpose():
    Ws, Bs, zs, ys, es, x, label = signals(TINY, seed=11)
    for j in range(len(Bs)):
        W_as_B = Bs[j].transpose(1, 2)
        for t in FEEDBACK_TERMS:
            F = pool_term(t.mirrors, W_as_B, ys[j], ys[j + 1], es[j], es[j + 1])
            G = feedback_term(t.index, Bs[j], ys[j], ys[j + 1], es[j], es[j + 1])
            torch.testing.assert_close(G, F.transpose(1, 2), rtol=1e-13, atol=1e-15)


def reference_feedback_update(phi, terms, B, y_pre, y_post, e_pre, e_post):
    out = B.clone()
    for s in terms:
        out = out + phi[:, s, None, None] * feedback_term(s, B, y_pre, y_post, e_pre, e_post)
    return out


def subsets():
    from itertools import combinations
    return [c for k in range(1, N_FEEDBACK_TERMS + 1) for c in combinations(ALL, k)]


def test_fused_feedback_update_equals_B_plus_sum_of_phi_s_times_terms_for_every_subset():
    Ws, Bs, zs, ys, es, x, label = signals(TINY, seed=3)
    T = x.shape[0]
    for n, terms in enumerate(subsets()):
        phi = torch.randn(T, N_FEEDBACK_TERMS, generator=torch.Generator().manual_seed(n), dtype=DT)
        for j in range(len(Bs)):
            got = fused_feedback_update(phi, terms, Bs[j], ys[j], ys[j + 1], es[j], es[j + 1])
            ref = reference_feedback_update(phi, terms, Bs[j], ys[j], ys[j + 1], es[j], es[j + 1])
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13, msg=f"terms {terms}, B_{j + 1}")


def test_fused_feedback_update_without_the_ehebb_term_needs_no_pre_error():
    Ws, Bs, zs, ys, es, x, label = signals(TINY, seed=5)
    phi = torch.randn(x.shape[0], N_FEEDBACK_TERMS, generator=torch.Generator().manual_seed(0), dtype=DT)
    terms = (KP, B_DECAY, B_OJA)
    got = fused_feedback_update(phi, terms, Bs[0], ys[0], ys[1], None, es[1])
    torch.testing.assert_close(got, reference_feedback_update(phi, terms, Bs[0], ys[0], ys[1], es[0], es[1]))


# ------------------------------------------------------------------ 2. the inner loop


@pytest.mark.parametrize("fb", [(KP,), (B_EHEBB,), ALL])
def test_one_plastic_step_updates_B_from_the_pre_update_B_and_the_errors_W_used(fb):
    Ws, Bs, zs, ys, es, x, label = signals(TINY, seed=7)
    theta, phi = theta_for(2, 1), phi_for(2, 2)
    rule = make_rule("bio", len(Ws))
    new_W, new_B = online_train_plastic(Ws, Bs, "fa", rule, theta, phi, fb, x.unsqueeze(1), label.unsqueeze(1))
    # in the first step W's update reads the initial B, so W is the fixed-feedback one
    fixed = online_train(Ws, Bs, "fa", rule, theta, x.unsqueeze(1), label.unsqueeze(1))
    assert all(torch.equal(a, b) for a, b in zip(new_W, fixed))
    for j in range(len(Bs)):
        ref = reference_feedback_update(phi, fb, Bs[j], ys[j], ys[j + 1], es[j], es[j + 1])
        torch.testing.assert_close(new_B[j], ref, rtol=1e-12, atol=1e-13)


def test_the_second_step_reads_the_updated_B():
    # two samples: the second sample's errors go through B after one update (not the initial B)
    Ws, Bs, zs, ys, es, x, label = signals(TINY, seed=8)
    theta, phi = theta_for(2, 3), phi_for(2, 4)
    rule = make_rule("fa", len(Ws))
    x2 = torch.stack([x, x.flip(-1)], dim=1)
    y2 = torch.stack([label, (label + 1) % TINY[-1]], dim=1)
    W1, B1 = online_train_plastic(Ws, Bs, "fa", rule, theta, phi, ALL, x2[:, :1], y2[:, :1])
    W2, B2 = online_train_plastic(Ws, Bs, "fa", rule, theta, phi, ALL, x2, y2)
    W2_ref, B2_ref = online_train_plastic(W1, B1, "fa", rule, theta, phi, ALL, x2[:, 1:], y2[:, 1:])
    for a, b in zip(W2 + B2, W2_ref + B2_ref):
        assert torch.equal(a, b)
    W2_fixed = online_train(W1, Bs, "fa", rule, theta, x2[:, 1:], y2[:, 1:])  # with the initial B instead
    assert (W2[1] - W2_fixed[1]).abs().max() > 1e-10


def test_online_train_plastic_does_not_modify_its_inputs_and_without_terms_is_online_train():
    ep = episode(TWO_HIDDEN, "pool", ALL)
    Wb, Bb = [W.clone() for W in ep.Ws], [B.clone() for B in ep.Bs]
    theta, phi = theta_for(2, 0), phi_for(2, 1)
    Ws, Bs = online_train_plastic(ep.Ws, ep.Bs, "fa", ep.rule, theta, phi, ALL, ep.x_train, ep.y_train)
    assert all(torch.equal(a, b) for a, b in zip(ep.Ws + ep.Bs, Wb + Bb))
    assert all((B - B0).abs().max() > 1e-6 for B, B0 in zip(Bs, Bb))
    Ws0, Bs0 = online_train_plastic(ep.Ws, ep.Bs, "fa", ep.rule, theta, phi, (), ep.x_train, ep.y_train)
    ref = online_train(ep.Ws, ep.Bs, "fa", ep.rule, theta, ep.x_train, ep.y_train)
    assert all(torch.equal(a, b) for a, b in zip(Ws0, ref))
    assert all(a is b for a, b in zip(Bs0, ep.Bs))


@pytest.mark.parametrize("mode", ["reverse", "adjoint"])
def test_phi_zero_changes_no_number_of_the_fixed_feedback_run(mode):
    """All feedback terms active with phi = 0: loss, accuracy, adapted W and theta's gradient are
    those of the run without plastic feedback, bit for bit; the Bs come back unchanged."""
    for rule in ["fa", "bio", "pool"]:
        fixed = episode(TWO_HIDDEN, rule, (), seed=3)
        plastic = episode(TWO_HIDDEN, rule, ALL, seed=3)
        theta = theta_for(2, 5)
        a = meta_gradient(theta, fixed, mode=mode)
        b = meta_gradient(theta, plastic, mode=mode, phi=torch.zeros(2, N_FEEDBACK_TERMS, dtype=DT))
        assert a.phi_grad is None and a.Bs is None
        assert torch.equal(a.loss, b.loss) and torch.equal(a.accuracy, b.accuracy)
        assert torch.equal(a.grad, b.grad), (rule, (a.grad - b.grad).abs().max())
        assert all(torch.equal(x, y) for x, y in zip(a.Ws, b.Ws))
        assert all(torch.equal(x, y) for x, y in zip(b.Bs, plastic.Bs))
        assert b.phi_grad.abs().max() > 0  # the gradient at phi = 0 is not zero


# ------------------------------------------ meta-gradient: finite differences, all engines


@pytest.mark.parametrize("mode", ["reverse", "adjoint"])
@pytest.mark.parametrize("rule, fb", [("bio", ALL), ("fa", (KP, B_DECAY)), ("pool", (B_EHEBB, B_OJA))])
def test_meta_gradient_wrt_theta_and_phi_matches_central_finite_differences(rule, fb, mode):
    ep = episode(TWO_HIDDEN, rule, fb, T=2, N=6, seed=1)
    theta, phi = theta_for(2, 2), phi_for(2, 3)
    res = meta_gradient(theta, ep, mode=mode, phi=phi)
    h = 1e-5
    fd_th, fd_ph = torch.zeros_like(theta), torch.zeros_like(phi)
    with torch.no_grad():
        for r in ep.rule.terms:
            tp, tm = theta.clone(), theta.clone()
            tp[:, r] += h
            tm[:, r] -= h
            fd_th[:, r] = (episode_loss(tp, ep, phi)[0] - episode_loss(tm, ep, phi)[0]) / (2 * h)
        for s in fb:
            pp, pm = phi.clone(), phi.clone()
            pp[:, s] += h
            pm[:, s] -= h
            fd_ph[:, s] = (episode_loss(theta, ep, pp)[0] - episode_loss(theta, ep, pm)[0]) / (2 * h)
    torch.testing.assert_close(res.grad, fd_th, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(res.phi_grad, fd_ph, rtol=1e-5, atol=1e-8)  # inactive terms: both 0
    assert res.phi_grad[:, list(fb)].abs().min() > 1e-6
    torch.testing.assert_close(res.loss, episode_loss(theta, ep, phi)[0].detach())


@pytest.mark.parametrize("fb", [(KP,), (B_DECAY,), (B_EHEBB,), (B_OJA,), ALL], ids=["kp", "decay", "ehebb", "oja", "all"])
@pytest.mark.parametrize("sizes", [TWO_HIDDEN, THREE_HIDDEN], ids=["2-hidden", "3-hidden"])
@pytest.mark.parametrize("rule", ["fa", "bio", "pool", [[0, 2], [0, 3], [0, 9], [0]]],
                         ids=["fa-kernel-first-layer", "bio", "pool", "per-layer"])
def test_adjoint_meta_gradient_wrt_theta_and_phi_equals_autograd(rule, sizes, fb):
    L = len(sizes) - 1
    if isinstance(rule, list):
        rule = rule[:L]
    ep = episode(sizes, rule, fb, N=8, seed=5)
    theta, phi = theta_for(2, 6), phi_for(2, 7)
    adj = meta_gradient(theta, ep, mode="adjoint", phi=phi)
    ref = meta_gradient(theta, ep, mode="reverse", phi=phi)
    torch.testing.assert_close(adj.loss, ref.loss, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(adj.accuracy, ref.accuracy)
    torch.testing.assert_close(adj.grad, ref.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(adj.phi_grad, ref.phi_grad, rtol=1e-10, atol=1e-13)
    for a, r in zip(adj.Ws + adj.Bs, ref.Ws + ref.Bs):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-14)
    assert adj.phi_grad[:, list(fb)].abs().min() > 1e-8, "every active feedback term gets a gradient"
    inactive = [s for s in ALL if s not in fb]
    assert (adj.phi_grad[:, inactive] == 0).all()


def test_forward_mode_meta_gradient_wrt_theta_and_phi_equals_reverse_mode():
    ep = episode(TWO_HIDDEN, "bio", ALL, N=6, seed=2)
    theta, phi = theta_for(2, 3), phi_for(2, 4)
    rev = meta_gradient(theta, ep, mode="reverse", phi=phi)
    fwd = meta_gradient(theta, ep, mode="forward", phi=phi)
    torch.testing.assert_close(fwd.loss, rev.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fwd.grad, rev.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fwd.phi_grad, rev.phi_grad, rtol=1e-9, atol=1e-12)
    for a, r in zip(fwd.Bs, rev.Bs):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-14)


def test_batched_trials_with_plastic_feedback_give_the_numbers_of_trials_run_alone():
    ep = episode(TWO_HIDDEN, "bio", ALL, T=3, N=5, seed=4)
    theta, phi = theta_for(3, 1), phi_for(3, 2)
    together = meta_gradient(theta, ep, mode="adjoint", phi=phi)
    for i in range(3):
        s = slice(i, i + 1)
        alone_ep = Episodic([W[s] for W in ep.Ws], [B[s] for B in ep.Bs], "fa", ep.rule, ep.x_train[s],
                            ep.y_train[s], ep.x_query[s], ep.y_query[s], feedback_terms=ALL)
        alone = meta_gradient(theta[s], alone_ep, mode="adjoint", phi=phi[s])
        torch.testing.assert_close(together.grad[s], alone.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(together.phi_grad[s], alone.phi_grad, rtol=1e-12, atol=1e-14)


def test_the_adjoint_leaves_the_episode_matrices_untouched():
    ep = episode(TWO_HIDDEN, "pool", ALL, seed=7)
    before = [M.clone() for M in ep.Ws + ep.Bs]
    meta_gradient(theta_for(2, 8), ep, mode="adjoint", phi=phi_for(2, 9))
    assert all(torch.equal(a, b) for a, b in zip(ep.Ws + ep.Bs, before))


# --------------------------------------------------------------- 4. Kolen-Pollack aligns


def test_kolen_pollack_drives_B_transpose_to_W_and_the_weight_angle_towards_zero():
    """theta_0 = phi_KP = lr and theta_3 = phi_decay = d: W and B^T get the same update
    except for the decay of their own starting values, so W_t - B_t^T = (1 - d)^t (W_0 - B_0^T)
    and the angle between W_l and B_l^T falls from about 90 degrees."""
    sizes, T, N, lr, d = (20, 16, 12, 5), 2, 800, 0.3, 0.005  # (1 - d)^N = 0.018
    g = gens([31, 32])
    Ws, Bs = init_weights(sizes, g, DT), init_feedback("fa", sizes, g, DT)
    data = torch.Generator().manual_seed(33)
    # a learnable stream: the label is the argmax of a fixed random projection of the input
    x = torch.rand(T, N, sizes[0], generator=data, dtype=DT)
    P = torch.randn(sizes[0], sizes[-1], generator=data, dtype=DT)
    y = ((x - 0.5) @ P).argmax(-1)
    theta = torch.zeros(T, N_TERMS, dtype=DT)
    theta[:, 0], theta[:, 3] = lr, d
    phi = torch.zeros(T, N_FEEDBACK_TERMS, dtype=DT)
    phi[:, KP], phi[:, B_DECAY] = lr, d
    angles = []

    def record(step, Ws_now, Bs_now):
        angles.append(metrics.weight_angles(Ws_now, Bs_now, "fa"))

    rule = make_rule([0, 3], len(sizes) - 1)
    W_N, B_N = online_train_plastic(Ws, Bs, "fa", rule, theta, phi, "kp", x, y, callback=record, every=100)
    for W0, B0, W, B in zip(Ws, Bs, W_N, B_N):
        torch.testing.assert_close(W - B.transpose(1, 2), (1 - d) ** N * (W0 - B0.transpose(1, 2)),
                                   rtol=1e-9, atol=1e-12)
    A = torch.stack(angles)  # (checkpoints, T, L)
    assert ((A[0] > 70) & (A[0] < 110)).all(), A[0]
    assert (A[-1] < 20).all(), A[-1]
    assert (A[1:] <= A[:-1] + 1.0).all(), "the angle falls (almost) monotonically"
    # without the feedback rule the angle stays where it was (B fixed: FA alone aligns W only mildly)
    fixed = online_train(Ws, Bs, "fa", rule, theta, x, y)
    assert (metrics.weight_angles(fixed, Bs, "fa") > A[-1] + 20).all()


# ----------------------------------------------------------------------- 5. refusals


@pytest.mark.parametrize("kind, hint", [("bp", "no feedback matrices"), ("usf", "sign"), ("frsf", "magnitudes"),
                                        ("dfa", "n_L"), ("drtp", "n_L")])
def test_pathways_without_free_matrices_shaped_like_W_transpose_refuse_plastic_feedback(kind, hint):
    assert not plastic_feedback_allowed(kind)
    with pytest.raises(ValueError, match=rf"(?s)refused for pathway '{kind}'.*{hint}.*feedback='fa'"):
        check_plastic_feedback(kind, "kp")
    sizes = TWO_HIDDEN
    with pytest.raises(ValueError, match="feedback='fa'"):
        episode(sizes, "fa", "kp", feedback=kind)
    g = gens([0])
    Ws, Bs = init_weights(sizes, g, DT), init_feedback(kind, sizes, g, DT)
    x, y = torch.rand(1, 2, sizes[0], dtype=DT), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="feedback='fa'"):
        online_train_plastic(Ws, Bs, kind, make_rule("fa", 3), theta_for(1, 0), phi_for(1, 0), ALL, x, y)
    # fixed feedback stays fine for every pathway
    assert check_plastic_feedback(kind, ()) == ()
    assert episode(sizes, "fa", (), feedback=kind).feedback_terms == ()


def test_only_feedback_alignment_accepts_plastic_feedback_among_the_built_in_pathways():
    from labkit.feedback import FEEDBACK_KINDS

    assert [k for k in FEEDBACK_KINDS if plastic_feedback_allowed(k)] == ["fa"]
    assert check_plastic_feedback("fa", "pool") == ALL
    with pytest.raises(ValueError, match="unknown feedback pathway"):
        plastic_feedback_allowed("nonesuch")


def test_bad_plastic_feedback_input_is_a_clear_value_error_before_any_work():
    with pytest.raises(ValueError, match="unknown feedback term"):
        episode(TWO_HIDDEN, "fa", "kp,hebb")
    fixed = episode(TWO_HIDDEN, "fa", ())
    plastic = episode(TWO_HIDDEN, "fa", "kp")
    assert plastic.feedback_terms == (KP, B_DECAY)
    theta, phi = theta_for(2, 0), phi_for(2, 0)
    for mode in ["adjoint", "reverse", "forward"]:
        with pytest.raises(ValueError, match="feedback is fixed"):
            meta_gradient(theta, fixed, mode=mode, phi=phi)
        with pytest.raises(ValueError, match="no phi was given"):
            meta_gradient(theta, plastic, mode=mode)
        with pytest.raises(ValueError, match=r"phi must be a \(2, 4\) tensor"):
            meta_gradient(theta, plastic, mode=mode, phi=phi[:, :2])
    bp = episode(TWO_HIDDEN, "bp", (), feedback="bp")
    with pytest.raises(ValueError, match="refused for pathway 'bp'"):  # phi for a pathway that cannot take it
        meta_gradient(theta, bp, phi=phi)
    with pytest.raises(ValueError, match="no phi"):
        episode_loss(theta, plastic)
    with pytest.raises(ValueError, match="mode"):
        meta_gradient(theta, plastic, mode="sideways", phi=phi)


def test_compiled_adjoint_steps_with_plastic_feedback_give_the_eager_meta_gradient():
    # torch.compile fuses each step's vector algebra (about a minute of compilation on 2 cores)
    ep = episode(TWO_HIDDEN, "bio", ALL, N=4, seed=11)
    theta, phi = theta_for(2, 12), phi_for(2, 13)
    eager = meta_gradient(theta, ep, mode="adjoint", phi=phi)
    compiled = meta_gradient(theta, ep, mode="adjoint", phi=phi, compile=True)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(compiled.grad, eager.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compiled.phi_grad, eager.phi_grad, rtol=1e-9, atol=1e-12)
    for a, b in zip(compiled.Bs, eager.Bs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_weight_angles_of_plastic_feedback_read_the_adapted_matrices():
    ep = episode(TWO_HIDDEN, "fa", "kp", seed=12)
    res = meta_gradient(theta_for(2, 1), ep, phi=phi_for(2, 2))
    angles = metrics.weight_angles(res.Ws, res.Bs, "fa")
    assert angles.shape == (2, 3) and torch.isfinite(angles).all()
    assert (angles - metrics.weight_angles(res.Ws, ep.Bs, "fa")).abs().max() > 1e-6
