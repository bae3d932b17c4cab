"""Claims about labkit.ops: the hand-written fast mat-vec primitives compute the same values
and the same gradients as their one-line reference forms, and the learner's meta-gradient
does not depend on which of the two is used."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.autograd import gradcheck

from labkit import ops
from labkit.feedback import init_feedback
from labkit.learner import Episodic, meta_gradient
from labkit.networks import init_weights
from labkit.rules import N_TERMS, make_rule

DT = torch.float64


def rand(*shape, seed=0, dtype=DT):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ref_matvec(W, y):
    return (W @ y[..., None])[..., 0]


def ref_vecmat(v, W):
    return (v[:, None, :] @ W)[:, 0]


def ref_lowrank(base, U, V):
    return base + U @ V


def value_and_grads(fn, inputs, upstream):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, upstream)
    return out.detach(), grads


# W is used both as stored and transposed (backprop feedback multiplies by a W^T view).
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous-W", "transposed-view-W"])
def test_matvec_equals_W_times_y_in_value_and_gradient(transposed):
    T, n, m = 2, 4, 3
    W = rand(T, m, n, seed=1).transpose(1, 2) if transposed else rand(T, n, m, seed=1)
    y = rand(T, m, seed=2)
    g = rand(T, n, seed=3)
    out, grads = value_and_grads(ops.matvec, (W, y), g)
    ref, ref_grads = value_and_grads(ref_matvec, (W, y), g)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-15)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert gradcheck(ops.matvec, (W.clone().requires_grad_(True), y.clone().requires_grad_(True)))


def test_vecmat_equals_W_transpose_times_v_in_value_and_gradient():
    T, n, m = 2, 4, 3
    v, W, g = rand(T, n, seed=1), rand(T, n, m, seed=2), rand(T, m, seed=3)
    out, grads = value_and_grads(ops.vecmat, (v, W), g)
    ref, ref_grads = value_and_grads(ref_vecmat, (v, W), g)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(out, torch.einsum("tn,tnm->tm", v, W), rtol=1e-14, atol=1e-15)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert gradcheck(ops.vecmat, (v.clone().requires_grad_(True), W.clone().requires_grad_(True)))


@pytest.mark.parametrize("k", [1, 3])
def test_lowrank_update_equals_base_plus_U_V_in_value_and_gradient(k):
    T, n, m = 2, 4, 3
    base, U, V, g = rand(T, n, m, seed=1), rand(T, n, k, seed=2), rand(T, k, m, seed=3), rand(T, n, m, seed=4)
    out, grads = value_and_grads(ops.lowrank_update, (base, U, V), g)
    ref, ref_grads = value_and_grads(ref_lowrank, (base, U, V), g)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-15)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert gradcheck(ops.lowrank_update, tuple(x.clone().requires_grad_(True) for x in (base, U, V)))


@pytest.mark.parametrize(
    "fn,shapes",
    [
        (ops.matvec, [(2, 4, 3), (2, 3)]),
        (ops.vecmat, [(2, 4), (2, 4, 3)]),
        (ops.lowrank_update, [(2, 4, 3), (2, 4, 1), (2, 1, 3)]),
        (ops.lowrank_update, [(2, 4, 3), (2, 4, 3), (2, 3, 3)]),
    ],
    ids=["matvec", "vecmat", "lowrank-k1", "lowrank-k3"],
)
def test_gradients_are_right_when_only_some_inputs_require_them(fn, shapes):
    inputs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    for needs in range(len(inputs)):
        args = [x.clone().requires_grad_(i == needs) for i, x in enumerate(inputs)]
        assert gradcheck(fn, tuple(args))


def test_reference_ops_switches_to_the_plain_forms_and_restores_the_fast_ones():
    W = rand(2, 4, 3, seed=1).requires_grad_(True)
    y = rand(2, 3, seed=2)
    assert "MatVec" in type(ops.matvec(W, y).grad_fn).__name__
    with ops.reference_ops():
        assert "MatVec" not in type(ops.matvec(W, y).grad_fn).__name__
        with ops.reference_ops():
            pass
        assert "MatVec" not in type(ops.matvec(W, y).grad_fn).__name__  # nesting keeps it on
    assert "MatVec" in type(ops.matvec(W, y).grad_fn).__name__
    with pytest.raises(RuntimeError):
        with ops.reference_ops():
            raise RuntimeError("boom")
    assert "MatVec" in type(ops.matvec(W, y).grad_fn).__name__  # restored after an error


def chain(W0, y, v, U1, V1):
    """Two updates in a row, the way the learner uses the ops: the weights an update makes
    are read by mat-vecs (z = W y, u = W^T v), whose results shape the next update, and the
    final weights are read by a plain matmul (the query loss)."""
    W1 = ops.lowrank_update(W0, U1, V1)
    z = ops.matvec(W1, y)
    u = ops.vecmat(v, W1)
    z2 = ops.matvec(W1, torch.tanh(y))  # a second reader of the same weights
    U2 = torch.stack([torch.tanh(z), z2], dim=-1)
    V2 = torch.stack([u, u * u], dim=1)
    W2 = ops.lowrank_update(W1, U2, V2)
    out = torch.tanh(ops.matvec(W2, y)).sum(-1) + (W2 @ W2.transpose(1, 2)).diagonal(dim1=1, dim2=2).sum(-1)
    return out + (z * z).sum(-1)


def chain_inputs(k=1):
    T, n, m = 2, 4, 3
    return (rand(T, n, m, seed=1), rand(T, m, seed=2), rand(T, n, seed=3), rand(T, n, k, seed=4), rand(T, k, m, seed=5))


# "deferred-weight-grads": the learner's meta-gradient mode, where mat-vecs hand their weight
# gradients to the update that made the weights (every backward pass here reaches all updates).
@pytest.mark.parametrize("deferred", [False, True], ids=["default", "deferred-weight-grads"])
@pytest.mark.parametrize("k", [1, 3])
def test_chained_updates_and_readers_have_the_reference_gradient(k, deferred):
    inputs = chain_inputs(k)
    g = rand(2, seed=9)
    with ops.deferred_weight_grads() if deferred else contextlib.nullcontext():
        out, grads = value_and_grads(chain, inputs, g)
        assert gradcheck(chain, tuple(x.clone().requires_grad_(True) for x in inputs))
    with ops.reference_ops():
        ref, ref_grads = value_and_grads(chain, inputs, g)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-14)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("deferred", [False, True], ids=["default", "deferred-weight-grads"])
def test_repeated_backward_through_a_retained_graph_gives_the_same_gradient(deferred):
    xs = [x.clone().requires_grad_(True) for x in chain_inputs(3)]
    with ops.deferred_weight_grads() if deferred else contextlib.nullcontext():
        out = chain(*xs).sum()
        first = torch.autograd.grad(out, xs, retain_graph=True)
        second = torch.autograd.grad(out, xs)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradient_with_respect_to_weights_made_by_an_update():
    # d/dW1 of a loss that reads W1 = base + U V through mat-vecs (and a plain op) is what
    # autograd says, though the backward pass stops at W1 and never reaches the update
    base, y, v, U, V = chain_inputs(1)
    g = rand(2, 4, seed=8)

    def grads_wrt_W1():
        W1 = ops.lowrank_update(base, U, V.clone().requires_grad_(True))
        out = (ops.matvec(W1, y) * g).sum() + ops.vecmat(v, W1).pow(2).sum() + W1.pow(2).sum()
        return torch.autograd.grad(out, W1)[0]

    fast = grads_wrt_W1()
    with ops.reference_ops():
        ref = grads_wrt_W1()
    torch.testing.assert_close(fast, ref, rtol=1e-14, atol=1e-15)
    assert ref.abs().max() > 0


# ----------------------------------------------- the learner: fast ops = reference ops


def episode(sizes, feedback, rule, T=2, N=6, Q=8, seed=0, dtype=DT):
    g = [torch.Generator().manual_seed(100 * seed + i) for i in range(T)]
    Ws = init_weights(sizes, g, dtype)
    Bs = init_feedback(feedback, sizes, g, dtype)
    d = torch.Generator().manual_seed(7 + seed)
    n0, nL = sizes[0], sizes[-1]
    return Episodic(
        Ws, Bs, feedback, make_rule(rule, len(sizes) - 1),
        torch.rand(T, N, n0, generator=d, dtype=dtype), torch.randint(nL, (T, N), generator=d),
        torch.rand(T, Q, n0, generator=d, dtype=dtype), torch.randint(nL, (T, Q), generator=d),
    )


def theta_for(T, seed, dtype=DT):
    th = 0.02 * torch.randn(T, N_TERMS, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    th[:, 0] = 0.3
    return th


@pytest.mark.parametrize("feedback", ["fa", "bp", "dfa"])
@pytest.mark.parametrize("rule", ["pool", "bio", "fa", [[0, 2], [0, 1, 4], [0, 9]]])
def test_meta_gradient_with_fast_ops_equals_reference_ops_float64(rule, feedback):
    ep = episode((12, 9, 7, 5), feedback, rule, seed=1)
    theta = theta_for(2, seed=2)
    fast = meta_gradient(theta, ep, mode="reverse")
    with ops.reference_ops():
        ref = meta_gradient(theta, ep, mode="reverse")
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-13, atol=1e-14)  # loss
    torch.testing.assert_close(fast[1], ref[1])  # accuracy
    torch.testing.assert_close(fast[2], ref[2], rtol=1e-11, atol=1e-13)  # meta-gradient
    assert fast[2][:, 0].abs().min() > 1e-4


def test_meta_gradient_with_fast_ops_equals_reference_ops_float32_paper_first_layer():
    # the paper's 784 -> 170 first layer, where the fast forms matter, in float32
    ep = episode((784, 170, 5), "fa", "pool", T=1, N=3, Q=6, seed=3, dtype=torch.float32)
    theta = theta_for(1, seed=4, dtype=torch.float32)
    fast = meta_gradient(theta, ep, mode="reverse")
    with ops.reference_ops():
        ref = meta_gradient(theta, ep, mode="reverse")
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)
    scale = ref[2].abs().max()
    torch.testing.assert_close(fast[2], ref[2], rtol=1e-3, atol=1e-4 * float(scale))


# ------------------------------- the hand-derived reverse pass (labkit.adjoint) = autograd

ALL_TERMS_PER_LAYER = [[1, 3, 4], [0, 5, 8], [2, 6, 7, 9]]


@pytest.mark.parametrize("feedback", ["fa", "bp", "dfa"])
@pytest.mark.parametrize(
    "rule", ["pool", "bio", "fa", "ehebb", "oja", "3,4", ALL_TERMS_PER_LAYER, [[0], [0, 2], [9]]],
    ids=["pool", "bio", "fa", "ehebb", "oja", "decay+broadcast", "every-term-somewhere", "per-layer"],
)
def test_adjoint_meta_gradient_equals_autograd_through_the_unrolled_loop_float64(rule, feedback):
    ep = episode((12, 9, 7, 5), feedback, rule, N=8, seed=5)
    theta = theta_for(2, seed=6)
    adj = meta_gradient(theta, ep, mode="adjoint")
    ref = meta_gradient(theta, ep, mode="reverse")
    torch.testing.assert_close(adj.loss, ref.loss, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(adj.accuracy, ref.accuracy)
    torch.testing.assert_close(adj.grad, ref.grad, rtol=1e-10, atol=1e-13)
    for a, r in zip(adj.Ws, ref.Ws):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-14)
    active = list(ep.rule.terms)
    assert adj.grad[:, active].abs().min() > 1e-8, "every active term should get a nonzero gradient"
    inactive = [r for r in range(N_TERMS) if r not in active]
    assert (adj.grad[:, inactive] == 0).all()


@pytest.mark.parametrize("feedback", ["fa", "bp", "dfa"])
@pytest.mark.parametrize("rule", ["fa", [[0, 5], [0, 2], [9]], [[5], [1, 3], [0]]], ids=["lr-only", "lr+theta5", "theta5-only"])
def test_first_layer_in_kernel_form_gives_the_dense_forms_meta_gradient(rule, feedback, monkeypatch):
    import labkit.adjoint as adjoint

    ep = episode((12, 9, 7, 5), feedback, rule, N=10, seed=21)
    assert adjoint._kernel_first_layer(ep.rule.layer_terms[0], 10, 12, 9)
    theta = theta_for(2, seed=22)
    kernel = meta_gradient(theta, ep, mode="adjoint")
    monkeypatch.setattr(adjoint, "_kernel_first_layer", lambda *a: False)
    dense = meta_gradient(theta, ep, mode="adjoint")
    ref = meta_gradient(theta, ep, mode="reverse")
    torch.testing.assert_close(kernel.loss, dense.loss, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(kernel.grad, dense.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(kernel.grad, ref.grad, rtol=1e-10, atol=1e-13)
    for a, r in zip(kernel.Ws, ref.Ws):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-14)


def test_kernel_form_is_used_only_where_the_first_layers_update_stays_in_the_inputs_span():
    from labkit.adjoint import _kernel_first_layer

    assert _kernel_first_layer((0,), 250, 784, 170)  # FA/BP/DFA learning-rate-only, paper size
    assert _kernel_first_layer((0, 5), 250, 784, 170)
    for terms in [(0, 2, 9), (0, 3), (0, 1), (9,), ()]:  # bio, decay, Hebbian, Oja's, none
        assert not _kernel_first_layer(terms, 250, 784, 170)
    assert not _kernel_first_layer((0,), 5000, 784, 170)  # long episodes: the dense form is cheaper


# bio: the dense form of the 784 -> 170 layer; fa: its kernel form
@pytest.mark.parametrize("rule", ["bio", "fa"], ids=["dense-first-layer", "kernel-first-layer"])
def test_adjoint_meta_gradient_equals_autograd_float32_paper_first_layer(rule):
    ep = episode((784, 170, 5), "fa", rule, T=2, N=20, Q=6, seed=3, dtype=torch.float32)
    theta = theta_for(2, seed=4, dtype=torch.float32) * 0.1
    adj = meta_gradient(theta, ep, mode="adjoint")
    ref = meta_gradient(theta, ep, mode="reverse")
    torch.testing.assert_close(adj.loss, ref.loss, rtol=1e-5, atol=1e-6)
    scale = float(ref.grad.abs().max())
    torch.testing.assert_close(adj.grad, ref.grad, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(adj.Ws[0], ref.Ws[0], rtol=1e-4, atol=1e-5)


def test_adjoint_leaves_the_episode_weights_untouched():
    ep = episode((12, 9, 5), "bp", "pool", seed=7)
    before = [W.clone() for W in ep.Ws]
    meta_gradient(theta_for(2, seed=8), ep, mode="adjoint")
    for W, b in zip(ep.Ws, before):
        assert torch.equal(W, b)


def test_adjoint_reports_a_non_finite_gradient_when_the_inner_loop_overflows():
    ep = episode((12, 9, 5), "fa", "oja", N=30, seed=9, dtype=torch.float32)
    theta = torch.zeros(2, N_TERMS)
    theta[:, 0], theta[:, 9] = 1e3, -1e3
    adj = meta_gradient(theta, ep, mode="adjoint")
    assert not torch.isfinite(adj.grad).all()


def test_compiled_adjoint_steps_give_the_eager_meta_gradient():
    # torch.compile fuses each step's vector algebra; the numbers must not change beyond rounding
    ep = episode((12, 9, 7, 5), "fa", "pool", N=8, seed=11)
    theta = theta_for(2, seed=12)
    eager = meta_gradient(theta, ep, mode="adjoint")
    compiled = meta_gradient(theta, ep, mode="adjoint", compile=True)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(compiled.grad, eager.grad, rtol=1e-9, atol=1e-12)


def test_compile_is_refused_outside_the_adjoint_mode():
    ep = episode((12, 9, 5), "fa", "bio", seed=13)
    with pytest.raises(ValueError, match="adjoint"):
        meta_gradient(theta_for(2, seed=1), ep, mode="reverse", compile=True)


def test_a_failing_compiler_gives_an_error_that_says_to_run_without_compile(monkeypatch):
    import labkit.adjoint as adjoint

    class FakeCompileError(Exception):
        pass

    FakeCompileError.__module__ = "torch._inductor.exc"

    def broken(*args):
        raise FakeCompileError("InvalidCxxCompiler: no working C++ compiler found")

    # the key is (layer terms, feedback, beta, kernel form of the first layer)
    monkeypatch.setitem(adjoint._COMPILED, (((0,), (0,)), "fa", 10.0, True), (broken, None, None, None))
    ep = episode((12, 9, 5), "fa", "fa", seed=1)
    with pytest.raises(RuntimeError, match="without --compile"):
        meta_gradient(theta_for(2, seed=1), ep, mode="adjoint", compile=True)
