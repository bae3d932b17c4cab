"""Why does DFA with a meta-learned learning rate stay at chance (results/dfa_lr)?

docs/reproduction.md, "Supp Fig S1". Four experiments on the paper's network 784-170-130-100-70-10
(softplus beta = 10, softmax output, Xavier-uniform W, B and D) on the offline digits:

A. scale: the entries of DFA's D_j against FA's B_l, and the size of the teaching signals
   ||e_j|| of BP, FA and DFA at initialisation (mean over 256 digit images).
B. ordinary mini-batch SGD (batch 32, 20 epochs) on a standard 10-class split
   (1197 train / 300 validation / 300 test images), learning rate chosen on the validation
   set from a grid, test accuracy over 3 weight seeds at that rate; BP, FA, DFA and a
   "readout only" control (hidden layers frozen). The signals come from labkit's pathways
   (labkit.feedback.backward); the update is W_l -= lr mean_batch(e_l y_{l-1}^T).
   Also the angle between each pathway's hidden signals and backprop's at the end.
C. the paper's online few-shot setting: 5-way tasks, K = 50 images per class seen once each
   (batch 1, one pass), Q = 10 query images per class; fixed learning rate over a log grid
   1e-4 .. 1 (the tasks and networks of labkit.evaluation.evaluate_rule, rule "fa" = term 0 only,
   theta = [lr, 0, ...], on fresh tasks, seed 20231805; the same loop here also returns the query
   loss, the meta-loss, and its accuracies are checked equal to evaluate_rule's); plus the
   readout-only control (its grid goes on to 10) and each pathway at the learning rate
   meta-learning ended with (results/*_lr).
D. the first 16 of those tasks with the 250 training images repeated for several passes (batch 1) at
   each pathway's best one-pass rate, and the alignment angles after one pass.
Also the range of theta_0 that meta-learning visited in results/dfa_lr (and fa_lr, bp_lr).

    .venv/bin/python scripts/dfa_investigation.py            # ~8 minutes on one (shared) core
    .venv/bin/python scripts/dfa_investigation.py --quick    # a smoke run (seconds)

Prints tables and writes results/dfa_investigation/results.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.data import EpisodeSampler, load_dataset, stack_episodes  # noqa: E402
from labkit.evaluation import evaluate_rule  # noqa: E402
from labkit.feedback import backward, init_feedback  # noqa: E402
from labkit.learner import online_train  # noqa: E402
from labkit.meta import trial_generators  # noqa: E402
from labkit.metrics import alignment_angles, query_loss_and_accuracy  # noqa: E402
from labkit.networks import BETA, forward, init_weights, xavier_bound  # noqa: E402
from labkit.rules import make_rule  # noqa: E402

SIZES = (784, 170, 130, 100, 70, 10)
PATHWAYS = ("bp", "fa", "dfa")
EVAL_SEED = 20231805  # fresh tasks: meta-training used seed 0, labkit evaluate defaults to 1000


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def finite_or_none(obj):
    """The results with every NaN / inf float replaced by None (null), so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def fmt(v: float) -> str:
    return "diverged" if not math.isfinite(v) else f"{v:.3f}"


# ------------------------------------------------------------------------------------ A. scale
def scale_check(ds, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    Ws = init_weights(SIZES, [g])
    mats = {fb: init_feedback(fb, SIZES, [torch.Generator().manual_seed(seed + 1)]) for fb in ("fa", "dfa")}
    L = len(SIZES) - 1
    out: dict = {"D_j": [], "B_l": []}
    for j in range(L):  # D_j: (n_j, n_L), j = 0..L-1
        D = mats["dfa"][j][0]
        out["D_j"].append({"j": j, "shape": list(D.shape), "bound": xavier_bound(*D.shape),
                           "rms": D.pow(2).mean().sqrt().item()})
    for l in range(1, L + 1):  # B_l: (n_{l-1}, n_l)
        B = mats["fa"][l - 1][0]
        out["B_l"].append({"l": l, "shape": list(B.shape), "bound": xavier_bound(*B.shape),
                           "rms": B.pow(2).mean().sqrt().item()})
    gi = torch.Generator().manual_seed(seed + 2)
    idx = torch.randperm(ds.images.shape[0], generator=gi)[:256]
    x, y = ds.images[idx].unsqueeze(0), ds.labels[idx].unsqueeze(0)
    _, ys = forward(Ws, x)
    onehot = torch.nn.functional.one_hot(y, SIZES[-1]).float()
    e_L = ys[-1] - onehot
    norms = {}
    for fb in PATHWAYS:
        es = backward(fb, Ws, mats.get(fb, []), ys, e_L, BETA, need_e0=False, target=onehot)
        # ||e_l|| (layer l = 1..L) and the size of the pseudo-gradient ||e_l y_{l-1}^T|| = ||e_l|| ||y_{l-1}||
        norms[fb] = {"e_norm": [es[l].norm(dim=-1).mean().item() for l in range(1, L + 1)],
                     "update_norm": [(es[l].norm(dim=-1) * ys[l - 1].norm(dim=-1)).mean().item()
                                     for l in range(1, L + 1)]}
    out["signals"] = norms
    return out


# ------------------------------------------------------------------------------ B. mini-batch
def minibatch_run(split, fb: str, lr: float, seed: int, epochs: int, bs: int = 32, readout_only: bool = False):
    (xtr, ytr), _, _ = split
    gw = torch.Generator().manual_seed(seed)
    Ws = init_weights(SIZES, [gw])
    Bs = init_feedback(fb, SIZES, [gw])
    L = len(Ws)
    go = torch.Generator().manual_seed(seed + 7)
    for _ in range(epochs):
        perm = torch.randperm(xtr.shape[0], generator=go)
        for s in range(0, xtr.shape[0], bs):
            b = perm[s:s + bs]
            xb, yb = xtr[b].unsqueeze(0), ytr[b].unsqueeze(0)
            _, ys = forward(Ws, xb)
            onehot = torch.nn.functional.one_hot(yb, SIZES[-1]).float()
            es = backward(fb, Ws, Bs, ys, ys[-1] - onehot, BETA, need_e0=False, target=onehot)
            Ws = [W if (readout_only and l < L - 1) else
                  W - lr * torch.bmm(es[l + 1].transpose(1, 2), ys[l]) / xb.shape[1] for l, W in enumerate(Ws)]
        if not all(torch.isfinite(W).all() for W in Ws):
            break
    return Ws, Bs


def minibatch_eval(Ws, x, y):
    if not all(torch.isfinite(W).all() for W in Ws):
        return float("nan"), float("nan")
    loss, acc = query_loss_and_accuracy(Ws, x.unsqueeze(0), y.unsqueeze(0))
    return loss.item(), acc.item()


def minibatch_experiment(ds, lrs, epochs: int, seeds: list[int], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(ds.images.shape[0], generator=g)
    parts = (perm[:1197], perm[1197:1497], perm[1497:])
    split = [(ds.images[p], ds.labels[p]) for p in parts]
    out = {"split": {"train": 1197, "validation": 300, "test": len(parts[2])}, "batch": 32, "epochs": epochs,
           "lr_grid": list(lrs), "test_seeds": seeds, "methods": {}}
    for name, fb, ro in (("bp", "bp", False), ("fa", "fa", False), ("dfa", "dfa", False),
                         ("readout_only", "bp", True)):
        val = []
        for lr in lrs:
            Ws, _ = minibatch_run(split, fb, lr, seeds[0], epochs, readout_only=ro)
            val.append(minibatch_eval(Ws, *split[1])[1])
        v = np.nan_to_num(np.array(val), nan=-1.0)
        best = float(lrs[int(np.argmax(v))])
        tests, angles = [], []
        for s in seeds:
            Ws, Bs = minibatch_run(split, fb, best, s, epochs, readout_only=ro)
            tests.append(minibatch_eval(Ws, *split[2])[1])
            if fb in ("fa", "dfa") and all(torch.isfinite(W).all() for W in Ws):
                angles.append(alignment_angles(Ws, Bs, fb, split[2][0].unsqueeze(0), split[2][1].unsqueeze(0))[0].tolist())
        out["methods"][name] = {"val_acc_by_lr": val, "best_lr": best, "test_acc": tests,
                                "test_acc_mean": float(np.mean(tests)),
                                "final_alignment_deg": np.mean(angles, 0).tolist() if angles else None}
    return out


# ------------------------------------------------------------------------- C. online few-shot
def theta_vec(lr: float) -> np.ndarray:
    th = np.zeros(10)
    th[0] = lr
    return th


class OnlineTasks:
    """The tasks and fresh networks of :func:`labkit.evaluation.evaluate_rule` (task k from
    ``trial_generators(EVAL_SEED, k)``, in chunks of 16), trained online with a fixed rate, but
    returning each task's query loss (the meta-loss) as well as its accuracy."""

    def __init__(self, ds, tasks: int):
        self.sampler = EpisodeSampler(ds, 5, 50, 10)
        self.tasks = tasks
        self.chunks = []
        for start in range(0, tasks, 16):
            ks = list(range(start, min(tasks, start + 16)))
            self.chunks.append((ks, stack_episodes([self.sampler.sample(trial_generators(EVAL_SEED, k)[0]) for k in ks])))

    @torch.no_grad()
    def run(self, rule, fb: str, lr: float) -> tuple[np.ndarray, np.ndarray]:
        losses, accs = [], []
        for ks, ep in self.chunks:
            wg = [trial_generators(EVAL_SEED, k)[1] for k in ks]
            Ws = init_weights(SIZES, wg)
            Bs = init_feedback(fb, SIZES, wg)
            th = torch.tensor(theta_vec(lr), dtype=torch.float32).expand(len(ks), 10).contiguous()
            Ws = online_train(Ws, Bs, fb, make_rule(rule, len(SIZES) - 1), th, ep.x_train, ep.y_train)
            loss, acc = query_loss_and_accuracy(Ws, ep.x_query, ep.y_query)
            losses.append(loss)
            accs.append(acc)
        return torch.cat(losses).numpy(), torch.cat(accs).numpy()


def summarize(loss: np.ndarray, acc: np.ndarray) -> dict:
    bad = ~np.isfinite(loss) | (loss > 10.0)
    return {"acc": float(np.nanmean(acc)), "median_loss": float(np.median(np.nan_to_num(loss, nan=np.inf))),
            "blown_up": float(bad.mean())}


def online_grid(tasks_obj: OnlineTasks, lrs, readout_extra) -> dict:
    tasks = tasks_obj.tasks
    out = {"M": 5, "K": 50, "Q": 10, "tasks": tasks, "seed": EVAL_SEED, "lr_grid": list(lrs),
           "blown_up_means": "fraction of tasks whose query loss is > 10 or not finite", "by_lr": {},
           "readout_only_extra_lrs": list(readout_extra), "check_vs_evaluate_rule": {}}
    # control: only the output layer learns (term 0 there; hidden layers carry the decay term with
    # coefficient 0, i.e. no change), so no pathway is involved at all
    readout = [[3]] * (len(SIZES) - 2) + [[0]]
    for name, rule, fb in (("bp", "fa", "bp"), ("fa", "fa", "fa"), ("dfa", "fa", "dfa"), ("readout_only", readout, "bp")):
        grid = list(lrs) + (list(readout_extra) if name == "readout_only" else [])
        out["by_lr"][name] = [summarize(*tasks_obj.run(rule, fb, lr)) for lr in grid]
    # the accuracies are evaluate_rule's own (same tasks, same networks), checked at one rate
    for fb in PATHWAYS:
        lr = 1e-2
        ours = tasks_obj.run("fa", fb, lr)[1]
        theirs = evaluate_rule("fa", theta_vec(lr), feedback=fb, tasks=tasks, seed=EVAL_SEED)
        out["check_vs_evaluate_rule"][fb] = {"lr": lr, "max_abs_diff": float(np.max(np.abs(ours - theirs)))}
    out["best"] = {}
    for name, rows in out["by_lr"].items():
        grid = list(lrs) + (list(readout_extra) if name == "readout_only" else [])
        i = int(np.nanargmax([r["acc"] for r in rows]))
        j = int(np.argmin([r["median_loss"] for r in rows]))
        out["best"][name] = {"lr": float(grid[i]), "acc": rows[i]["acc"], "lowest_loss_lr": float(grid[j]),
                             "lowest_median_loss": rows[j]["median_loss"], "acc_at_lowest_loss_lr": rows[j]["acc"]}
    return out


def meta_learned_rates() -> dict:
    import pandas as pd

    out = {}
    for fb in PATHWAYS:
        path = ROOT / "results" / f"{fb}_lr" / "history.csv"
        if not path.exists():
            continue
        h = pd.read_csv(path)
        last = h.sort_values("episode").groupby("trial").theta_0.last()
        out[fb] = {"episodes": int(h.episode.max()), "trials": int(h.trial.nunique()),
                   "theta0_min": float(h.theta_0.min()), "theta0_max": float(h.theta_0.max()),
                   "theta0_final_mean": float(last.mean()),
                   "theta0_final_range": [float(last.min()), float(last.max())]}
    return out


def online_at_meta_rates(tasks_obj: OnlineTasks, meta: dict) -> dict:
    return {fb: {"lr": m["theta0_final_mean"], **summarize(*tasks_obj.run("fa", fb, m["theta0_final_mean"]))}
            for fb, m in meta.items()}


# -------------------------------------------------------------- D. passes and online alignment
@torch.no_grad()
def passes_experiment(ds, best: dict, passes: list[int], tasks: int) -> dict:
    sampler = EpisodeSampler(ds, 5, 50, 10)
    gens = [trial_generators(EVAL_SEED, k) for k in range(tasks)]
    ep = stack_episodes([sampler.sample(gens[k][0]) for k in range(tasks)])
    out = {"tasks": tasks, "passes": passes, "acc": {}, "alignment_deg_init": {}, "alignment_deg_after_1_pass": {}}
    for fb in PATHWAYS:
        lr = best[fb]["lr"]
        wg = [trial_generators(EVAL_SEED, k)[1] for k in range(tasks)]
        Ws0 = init_weights(SIZES, wg)
        Bs = init_feedback(fb, SIZES, wg)
        rule = make_rule("fa", len(SIZES) - 1)
        th = torch.tensor(theta_vec(lr), dtype=torch.float32).expand(tasks, 10).contiguous()
        Ws, accs, done = Ws0, {}, 0
        for p in passes:
            for _ in range(p - done):
                Ws = online_train(Ws, Bs, fb, rule, th, ep.x_train, ep.y_train)
            done = p
            accs[p] = float(np.nanmean(query_loss_and_accuracy(Ws, ep.x_query, ep.y_query)[1].numpy()))
            if p == 1 and fb != "bp":
                out["alignment_deg_after_1_pass"][fb] = np.nanmean(
                    alignment_angles(Ws, Bs, fb, ep.x_query, ep.y_query).numpy(), 0).tolist()
        if fb != "bp":
            out["alignment_deg_init"][fb] = np.nanmean(
                alignment_angles(Ws0, Bs, fb, ep.x_query, ep.y_query).numpy(), 0).tolist()
        out["acc"][fb] = {"lr": lr, "acc_by_passes": accs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run with tiny grids (not the reported numbers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "dfa_investigation" / "results.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    ds = load_dataset("digits")

    if args.quick:
        mb_lrs, epochs, mb_seeds = [0.03, 0.1], 2, [args.seed]
        on_lrs, tasks = [1e-3, 1e-2, 1e-1], 8
        passes, p_tasks = [1, 2], 8
    else:
        mb_lrs, epochs = [0.003, 0.01, 0.02, 0.03, 0.1, 0.3, 1.0], 20
        mb_seeds = [args.seed, args.seed + 1, args.seed + 2]
        on_lrs, tasks = [float(v) for v in 10 ** np.linspace(-4, 0, 13)], 32
        passes, p_tasks = [1, 4, 12], 16

    res: dict = {"what": "DFA investigation (docs/reproduction.md, Supp Fig S1)", "network": list(SIZES),
                 "dataset": "digits", "seed": args.seed, "quick": args.quick,
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit()}

    res["scale"] = scale_check(ds, args.seed)
    print("A. scale of the feedback matrices (Xavier-uniform bound, rms of the entries)")
    for d in res["scale"]["D_j"]:
        print(f"   D_{d['j']} {tuple(d['shape'])}: bound {d['bound']:.3f}, rms {d['rms']:.3f}")
    for b in res["scale"]["B_l"]:
        print(f"   B_{b['l']} {tuple(b['shape'])}: bound {b['bound']:.3f}, rms {b['rms']:.3f}")
    print("   mean ||e_l|| at initialisation, l = 1..5 (256 digit images)")
    for fb in PATHWAYS:
        s = res["scale"]["signals"][fb]
        print(f"   {fb:4s} " + "  ".join(f"{v:.2e}" for v in s["e_norm"]))

    res["minibatch"] = mb = minibatch_experiment(ds, mb_lrs, epochs, mb_seeds, args.seed)
    print(f"\nB. mini-batch SGD, 10 classes, batch 32, {epochs} epochs (chance 10%); validation accuracy by lr, "
          "test accuracy at the best")
    print("   method        " + "  ".join(f"{lr:>8g}" for lr in mb_lrs) + "   best lr   test acc (seeds)   alignment (deg)")
    for name, m in mb["methods"].items():
        al = "" if m["final_alignment_deg"] is None else ", ".join(f"{a:.0f}" for a in m["final_alignment_deg"])
        print(f"   {name:13s} " + "  ".join(f"{fmt(v):>8s}" for v in m["val_acc_by_lr"])
              + f"   {m['best_lr']:<8g}  {m['test_acc_mean']:.3f} ({', '.join(f'{a:.3f}' for a in m['test_acc'])})   {al}")

    print(f"   ({time.time() - t0:.0f} s so far)")
    res["meta_learned_theta0"] = meta = meta_learned_rates()
    tasks_obj = OnlineTasks(ds, tasks)
    res["online"] = on = online_grid(tasks_obj, on_lrs, [] if args.quick else [2.15, 4.64, 10.0])
    res["online_at_meta_learned_rate"] = atm = online_at_meta_rates(tasks_obj, meta)
    print(f"\nC. online few-shot (5-way, K=50 seen once, batch 1, Q=10; chance 20%), {tasks} fresh tasks per point:")
    print("   query accuracy / median query loss (the meta-loss) / share of tasks whose loss blew up (> 10)")
    names = list(on["by_lr"])
    print("   lr        " + "".join(f"{k:>24s}" for k in names))
    ro_grid = list(on_lrs) + on["readout_only_extra_lrs"]
    for i, lr in enumerate(ro_grid):
        cells = []
        for k in names:
            rows = on["by_lr"][k]
            if i < len(rows):
                r = rows[i]
                ml = f"{r['median_loss']:.2f}" if r["median_loss"] < 1e3 else f"{r['median_loss']:.0e}"
                cells.append(f"{r['acc']:.3f} / {ml} / {r['blown_up']:.2f}".rjust(24))
            else:
                cells.append(" " * 24)
        print(f"   {lr:<9.2e} " + "".join(cells))
    for k, b in on["best"].items():
        print(f"   {k:12s} best accuracy {b['acc']:.3f} at lr {b['lr']:.3g}; lowest median loss "
              f"{b['lowest_median_loss']:.3f} at lr {b['lowest_loss_lr']:.3g} (accuracy there {b['acc_at_lowest_loss_lr']:.3f})")
    for fb, c in on["check_vs_evaluate_rule"].items():
        print(f"   check: {fb} accuracies equal evaluate_rule's at lr {c['lr']:g} (max |diff| {c['max_abs_diff']:.1e})")
    for fb, m in meta.items():
        a = atm[fb]
        print(f"   meta-learned theta_0 ({fb}_lr, {m['trials']} x {m['episodes']}): visited {m['theta0_min']:.4f}.."
              f"{m['theta0_max']:.4f}, final mean {m['theta0_final_mean']:.4f} -> accuracy {a['acc']:.3f}, "
              f"median loss {a['median_loss']:.3f}")
    print(f"   ({time.time() - t0:.0f} s so far)")
    res["passes"] = ps = passes_experiment(ds, {k: on["best"][k] for k in PATHWAYS}, passes, p_tasks)
    print(f"\nD. the first {p_tasks} of those tasks, the 250 training images repeated (batch 1), at each pathway's "
          "best one-pass lr")
    for fb, m in ps["acc"].items():
        print(f"   {fb:4s} lr {m['lr']:.2g}: " + ", ".join(f"{p} pass{'es' if p > 1 else ''} {a:.3f}"
                                                        for p, a in m["acc_by_passes"].items()))
    for fb in ps["alignment_deg_init"]:
        print(f"   {fb:4s} angle to backprop's signal alpha_1..4 (deg): at init "
              + ", ".join(f"{a:.0f}" for a in ps["alignment_deg_init"][fb]) + "; after one pass "
              + ", ".join(f"{a:.0f}" for a in ps["alignment_deg_after_1_pass"][fb]))

    res["runtime_s"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(finite_or_none(res), indent=1, allow_nan=False) + "\n")
    print(f"\nwrote {out} ({res['runtime_s']} s)")


if __name__ == "__main__":
    main()
