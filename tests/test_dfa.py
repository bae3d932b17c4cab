"""Direct feedback alignment (DFA) checked against an independent derivation.

Nøkland (2016), "Direct feedback alignment provides learning in deep neural networks": with
output error e = y_L - y* (softmax + cross-entropy), hidden layer j's error is

    delta_j = (D_j e) * f'(a_j),     D_j fixed random of shape (n_j, n_L),

and the weights of layer l move by -lr delta_l y_{l-1}^T. Here f is softplus with beta = 10,
so f'(a) = sigmoid(beta a). Everything below is written with plain torch and Python loops
(scalar sums, no labkit pathway or feedback code) and compared with labkit's ``backward("dfa")``
and one step of ``online_train`` with the pseudo-gradient (term 0), for every layer including
the synthetic input-layer error e_0. A second test checks that DFA actually trains a small
network on real digits with mini-batch SGD (docs/reproduction.md, Supplementary Fig S1).
"""
from __future__ import annotations

import math

import torch

from labkit.data import load_dataset
from labkit.feedback import backward, init_feedback
from labkit.learner import online_train
from labkit.networks import init_weights
from labkit.rules import make_rule

DT = torch.float64
BETA = 10.0


def _softplus(a: float) -> float:
    return math.log1p(math.exp(BETA * a)) / BETA if BETA * a < 30 else a


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-BETA * a))


def _reference_dfa(W: list[list[list[float]]], D: list[list[list[float]]], x0_pre: list[float], label: int):
    """Forward and DFA deltas with scalar loops. W[l] is (n_{l+1} x n_l) row lists; D[j] is
    (n_j x n_L). The input is x = softplus(x0_pre), so that f'(a_0) = sigmoid(beta x0_pre)
    exists for the synthetic input-layer error. Returns (activities, deltas) per layer."""
    L = len(W)
    a = [list(x0_pre)]  # pre-activations, layer 0 included
    y = [[_softplus(v) for v in x0_pre]]
    for l in range(L):
        z = [sum(W[l][i][k] * y[l][k] for k in range(len(y[l]))) for i in range(len(W[l]))]
        a.append(z)
        if l < L - 1:
            y.append([_softplus(v) for v in z])
        else:
            m = max(z)
            ex = [math.exp(v - m) for v in z]
            s = sum(ex)
            y.append([v / s for v in ex])
    e = [y[L][i] - (1.0 if i == label else 0.0) for i in range(len(y[L]))]
    deltas: list = [None] * (L + 1)
    deltas[L] = e
    for j in range(L):
        deltas[j] = [sum(D[j][i][k] * e[k] for k in range(len(e))) * _sigmoid(a[j][i]) for i in range(len(D[j]))]
    return y, deltas


def _net(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(sizes, [g], DT)
    Ds = init_feedback("dfa", sizes, [g], DT)
    return Ws, Ds


def test_dfa_signals_and_update_equal_an_independent_derivation_in_every_layer():
    sizes = (9, 7, 6, 5, 4)  # four weight layers: e_0 (synthetic), three hidden, output
    L = len(sizes) - 1
    for seed in range(3):
        Ws, Ds = _net(sizes, seed)
        # the matrices have the shapes DFA needs: D_j is (n_j, n_L) for j = 0..L-1
        assert [tuple(D.shape[1:]) for D in Ds] == [(sizes[j], sizes[-1]) for j in range(L)]
        g = torch.Generator().manual_seed(100 + seed)
        x_pre = torch.randn(sizes[0], generator=g, dtype=DT) * 0.3
        x = torch.nn.functional.softplus(x_pre, beta=BETA)
        label = seed % sizes[-1]

        W_list = [W[0].tolist() for W in Ws]
        D_list = [D[0].tolist() for D in Ds]
        y_ref, d_ref = _reference_dfa(W_list, D_list, x_pre.tolist(), label)

        # the same forward pass in torch, then labkit's DFA pathway
        ys = [x.unsqueeze(0)]
        for l in range(L):
            z = Ws[l][0] @ ys[-1][0]
            ys.append((torch.nn.functional.softplus(z, beta=BETA, threshold=40.0) if l < L - 1
                       else torch.softmax(z, -1)).unsqueeze(0))
        onehot = torch.zeros(1, sizes[-1], dtype=DT)
        onehot[0, label] = 1.0
        es = backward("dfa", Ws, Ds, ys, ys[-1] - onehot, BETA, need_e0=True, target=onehot)
        for j in range(L + 1):
            torch.testing.assert_close(ys[j][0], torch.tensor(y_ref[j], dtype=DT), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(es[j][0], torch.tensor(d_ref[j], dtype=DT), rtol=1e-9, atol=1e-12,
                                       msg=lambda m, j=j: f"layer {j}: {m}")
        # every hidden error is driven by the OUTPUT error (not by the layer above): changing
        # D_{j} changes e_j only
        Ds2 = [D.clone() for D in Ds]
        Ds2[1] = Ds2[1] * 2.0
        es2 = backward("dfa", Ws, Ds2, ys, ys[-1] - onehot, BETA, need_e0=True, target=onehot)
        for j in range(L + 1):
            if j == 1:
                torch.testing.assert_close(es2[j], 2.0 * es[j])
            else:
                torch.testing.assert_close(es2[j], es[j])

        # one online step of the pseudo-gradient (term 0) is Nøkland's update -lr delta_l y_{l-1}^T
        lr = 0.37
        theta = torch.zeros(1, 10, dtype=DT)
        theta[0, 0] = lr
        new = online_train(Ws, Ds, "dfa", make_rule("fa", L), theta, x.view(1, 1, -1), torch.tensor([[label]]))
        for l in range(L):
            expect = [[W_list[l][i][k] - lr * d_ref[l + 1][i] * y_ref[l][k] for k in range(sizes[l])]
                      for i in range(sizes[l + 1])]
            torch.testing.assert_close(new[l][0], torch.tensor(expect, dtype=DT), rtol=1e-9, atol=1e-12)


def test_dfa_with_D_equal_to_the_last_weights_transposed_is_backprop_in_the_last_hidden_layer():
    # the sign convention: for the layer just below the output, D = W_L^T makes DFA's error
    # exactly backprop's, so DFA's update descends the loss there (not ascends it)
    sizes = (8, 6, 5, 3)
    Ws, Ds = _net(sizes, 7)
    Ds = [D.clone() for D in Ds]
    Ds[-1] = Ws[-1].transpose(1, 2).clone()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, sizes[0], generator=g, dtype=DT)
    ys = [x]
    for l, W in enumerate(Ws):
        z = ys[-1] @ W[0].T
        ys.append(torch.nn.functional.softplus(z, beta=BETA, threshold=40.0) if l < len(Ws) - 1 else torch.softmax(z, -1))
    onehot = torch.nn.functional.one_hot(torch.tensor([2]), 3).to(DT)
    e_dfa = backward("dfa", Ws, Ds, ys, ys[-1] - onehot, BETA, need_e0=False, target=onehot)
    # autograd's gradient of the cross-entropy with respect to the last hidden pre-activation
    W = [w[0].clone().requires_grad_(True) for w in Ws]
    a = None
    h = x[0]
    for l in range(len(W)):
        a = W[l] @ h
        if l == len(W) - 2:
            a.retain_grad()
            a_last_hidden = a
        h = torch.nn.functional.softplus(a, beta=BETA, threshold=40.0) if l < len(W) - 1 else a
    loss = -torch.log_softmax(h, -1)[2]
    loss.backward()
    torch.testing.assert_close(e_dfa[-2][0], a_last_hidden.grad, rtol=1e-9, atol=1e-12)


def _train_minibatch(x, y, sizes, feedback, lr, epochs, hidden_lr=None, bs=32):
    """Mini-batch SGD whose teaching signals come from labkit's pathway ``feedback``:
    W_l <- W_l - lr mean_batch(e_l y_{l-1}^T). ``hidden_lr`` overrides the rate of the hidden
    layers (0: only the readout learns, on fixed random features). Returns (loss, accuracy)."""
    gw = torch.Generator().manual_seed(1)
    Ws = init_weights(sizes, [gw])
    Ds = init_feedback(feedback, sizes, [gw])
    L = len(Ws)
    rates = [lr if hidden_lr is None or l == L - 1 else hidden_lr for l in range(L)]
    for _ in range(epochs):
        for s in range(0, x.shape[1], bs):
            xb, yb = x[:, s:s + bs], y[:, s:s + bs]
            ys = [xb]
            for l, W in enumerate(Ws):
                z = torch.bmm(ys[-1], W.transpose(1, 2))
                ys.append(torch.nn.functional.softplus(z, beta=BETA, threshold=40.0) if l < L - 1
                          else torch.softmax(z, -1))
            onehot = torch.nn.functional.one_hot(yb, sizes[-1]).float()
            es = backward(feedback, Ws, Ds, ys, ys[-1] - onehot, BETA, need_e0=False, target=onehot)
            Ws = [W - rates[l] * torch.bmm(es[l + 1].transpose(1, 2), ys[l]) / xb.shape[1] for l, W in enumerate(Ws)]
    h = x
    for l, W in enumerate(Ws):
        h = h @ W[0].T
        if l < L - 1:
            h = torch.nn.functional.softplus(h, beta=BETA, threshold=40.0)
    return torch.nn.functional.cross_entropy(h[0], y[0]).item(), (h[0].argmax(-1) == y[0]).float().mean().item()


def test_dfa_lowers_the_training_loss_of_a_small_net_with_minibatch_sgd_on_digits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10x faster than two on a busy machine
    try:
        _check_dfa_minibatch()
    finally:
        torch.set_num_threads(threads)


def _check_dfa_minibatch():
    ds = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(ds.images.shape[0], generator=g)[:320]
    x, y = ds.images[idx].unsqueeze(0), ds.labels[idx].unsqueeze(0)  # (1, N, 784), (1, N)
    sizes = (784, 40, 30, 10)
    loss0, _ = _train_minibatch(x, y, sizes, "dfa", 0.1, epochs=0)
    loss, acc = _train_minibatch(x, y, sizes, "dfa", 0.1, epochs=8)
    # the same protocol with the hidden layers frozen (what DFA would be with zero hidden
    # signals): the readout alone on random softplus features barely learns in 8 epochs
    loss_ro, _ = _train_minibatch(x, y, sizes, "dfa", 0.1, epochs=8, hidden_lr=0.0)
    assert math.isfinite(loss)
    assert loss < 0.4 * loss0, (loss0, loss)  # 2.33 -> 0.60 when written
    assert acc > 0.6, acc  # 0.79 when written (chance 0.1)
    assert loss < loss_ro - 1.0, (loss, loss_ro)  # readout only: 2.23
