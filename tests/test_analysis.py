"""Claims about labkit.analysis: fresh tasks for paired comparisons, per-task theta, information flow."""
import numpy as np
import pytest
import torch

from labkit.analysis import FreshTasks, fresh_tasks, information_flow, task_theta
from labkit.learner import online_train
from labkit.metrics import query_loss_and_accuracy
from labkit.rules import make_rule
from labkit.terms import N_TERMS

try:
    from labkit.evaluation import evaluate_rule
except ImportError:  # before labkit.meta was split
    from labkit.meta import evaluate_rule


@pytest.fixture(scope="module")
def small() -> FreshTasks:
    return fresh_tasks((12, 8), tasks=3, K=4, Q=2, seed=1000)


def test_fresh_tasks_have_the_documented_shapes(small):
    assert small.sizes == (784, 12, 8, 10) and small.feedback == "fa"
    assert small.tasks == 3 and small.n_layers == 3
    assert [tuple(W.shape) for W in small.Ws] == [(3, 12, 784), (3, 8, 12), (3, 10, 8)]
    assert [tuple(B.shape) for B in small.Bs] == [(3, 784, 12), (3, 12, 8), (3, 8, 10)]
    ep = small.episodes
    assert tuple(ep.x_train.shape) == (3, 20, 784) and tuple(ep.y_train.shape) == (3, 20)
    assert tuple(ep.x_query.shape) == (3, 10, 784) and tuple(ep.y_query.shape) == (3, 10)


def test_fresh_tasks_are_reproducible_and_depend_on_the_seed(small):
    again = fresh_tasks((12, 8), tasks=3, K=4, Q=2, seed=1000)
    other = fresh_tasks((12, 8), tasks=3, K=4, Q=2, seed=1001)
    assert all(torch.equal(a, b) for a, b in zip(small.Ws, again.Ws))
    assert torch.equal(small.episodes.x_train, again.episodes.x_train)
    assert not torch.equal(small.Ws[0], other.Ws[0])
    # task k does not depend on how many tasks are drawn
    two = fresh_tasks((12, 8), tasks=2, K=4, Q=2, seed=1000)
    assert torch.equal(two.Ws[1], small.Ws[1][:2]) and torch.equal(two.episodes.y_query, small.episodes.y_query[:2])


def test_fresh_tasks_are_the_tasks_evaluate_rule_draws():
    theta = np.zeros(N_TERMS)
    theta[0], theta[2] = 0.01, -0.02
    t = fresh_tasks((10,), tasks=3, K=3, Q=2, seed=1234)
    W = online_train(t.Ws, t.Bs, "fa", make_rule("ehebb", t.n_layers), task_theta(theta, t.tasks),
                     t.episodes.x_train, t.episodes.y_train)
    _, acc = query_loss_and_accuracy(W, t.episodes.x_query, t.episodes.y_query)
    expected = evaluate_rule("ehebb", theta, hidden=(10,), K=3, Q=2, tasks=3, seed=1234)
    np.testing.assert_array_equal(acc.numpy(), expected)


def test_task_theta_repeats_one_vector_or_cycles_rows():
    v = np.arange(N_TERMS, dtype=float)
    th = task_theta(v, 4)
    assert th.shape == (4, N_TERMS) and th.dtype == torch.float32
    assert (th == torch.as_tensor(v, dtype=torch.float32)).all()
    rows = np.stack([v, -v])
    th = task_theta(rows, 5)
    assert th[:, 1].tolist() == [1, -1, 1, -1, 1]
    with pytest.raises(ValueError, match="shape"):
        task_theta(np.zeros(3), 2)


def test_information_flow_is_one_for_backprop_and_at_the_output(small):
    ep = small.episodes
    fa = information_flow(small.Ws, small.Bs, ep.x_query, ep.y_query)
    assert list(fa.index) == [1, 2, 3] and list(fa.columns) == ["signal_cosine", "gradient_cosine"]
    assert fa.loc[3].tolist() == pytest.approx([1.0, 1.0])
    assert ((fa.to_numpy() >= -1 - 1e-6) & (fa.to_numpy() <= 1 + 1e-6)).all()
    assert fa.loc[1, "gradient_cosine"] < 0.9  # random feedback at init: far from the gradient
    bp = information_flow(small.Ws, [], ep.x_query, ep.y_query, feedback="bp")
    np.testing.assert_allclose(bp.to_numpy(), 1.0, atol=1e-5)


def test_information_flow_matches_a_direct_computation_on_one_sample():
    g = torch.Generator().manual_seed(0)
    sizes = (6, 5, 4, 3)
    Ws = [torch.randn(1, sizes[l + 1], sizes[l], generator=g, dtype=torch.float64) for l in range(3)]
    Bs = [torch.randn(1, sizes[l], sizes[l + 1], generator=g, dtype=torch.float64) for l in range(3)]
    x = torch.rand(1, 1, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([[2]])
    flow = information_flow(Ws, Bs, x, y)
    # by hand: e_2 through B_3 and through W_3^T, softplus' = 1 - exp(-beta y)
    from labkit.networks import BETA, forward

    _, ys = forward(Ws, x)
    e3 = ys[3] - torch.nn.functional.one_hot(y, 3).double()
    d2 = 1 - torch.exp(-BETA * ys[2])
    e2_fa = (e3 @ Bs[2][0].T) * d2
    e2_bp = (e3 @ Ws[2][0]) * d2
    cos = float((e2_fa * e2_bp).sum() / (e2_fa.norm() * e2_bp.norm()))
    assert flow.loc[2, "signal_cosine"] == pytest.approx(cos)
    # one sample: the gradient cosine equals the signal cosine (both are outer products with y_1)
    assert flow.loc[2, "gradient_cosine"] == pytest.approx(cos)
