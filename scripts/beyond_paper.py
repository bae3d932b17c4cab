"""The follow-up study's claims, tested on the offline digits (docs/beyond-the-paper.md).

The authors' follow-up (Shervani-Tabar, Mirhoseini & Rosenbaum, arXiv 2408.08408) claims that
Oja's term stabilises online learning in deep and badly initialised networks, and that
meta-learned local rules with Oja's term beat backprop when data are scarce. Three experiments:

``scarce``  (experiment 1) meta-train six rules at K = 1, 5, 10, 25, 50 images per class on
            five of the ten digit classes (``scripts/beyond/scarce_data.toml``, a ``labkit
            sweep``), then evaluate every cell's per-trial theta on new tasks drawn from the
            five held-out classes: at its own K (protocol "per_K") and, for the K = 50 cells,
            at every K (protocol "from_K50"). For one K the same seed gives every rule the same
            tasks and initial weights, so the differences to backprop are paired.
``online``  (experiments 2 and 3) one online pass (batch 1) over the digits in networks of
            2, 4, 8 and 12 hidden layers of 100 units, with the forward weights drawn at 0.3x,
            1x and 3x the Xavier scale: FA, FA + Oja, BP, BP + Oja and the meta-learned F^bio
            (``results/bio_20x600``); accuracy, hidden-layer weight norms and the effective rank
            of hidden activations over the pass. Then a check that the learning rate 0.01 is
            not what decides: the four hand-set rules at 4 and 12 layers with 0.001-0.03.

Usage (from the repository root; each step skips what is already on disk)::

    .venv/bin/python scripts/beyond_paper.py scarce --workers 2
    .venv/bin/python scripts/beyond_paper.py online
    .venv/bin/python scripts/beyond_paper.py all --workers 2

Writes ``results/beyond/``: ``scarce_data/`` (the sweep: one run folder per cell, sweep.csv),
``scarce_eval.json`` (every evaluated task's accuracy), ``scarce_table.csv`` (means, 98% CIs,
paired differences to backprop), ``deep_init.json``/``.csv`` and ``deep_lr.json``/``.csv``.
The figures are drawn by ``notebooks/06_beyond_the_paper`` from these files.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.analysis import online_study, online_study_table, paired_comparison  # noqa: E402
from labkit.evaluation import evaluate_rule  # noqa: E402
from labkit.results import read_config, theta_matrix, write_json_atomic  # noqa: E402
from labkit.tutorial import theta_vector  # noqa: E402

OUT = ROOT / "results" / "beyond"
SWEEP_FILE = ROOT / "scripts" / "beyond" / "scarce_data.toml"
SWEEP_DIR = OUT / "scarce_data"
KS = (1, 5, 10, 25, 50)
EVAL_TASKS = 100
EVAL_SEED = 1000
TEST_CLASSES = 5

#: The six rules of experiment 1: label -> (rule, feedback) of the sweep's cells.
SCARCE_RULES = {
    "BP (learning rate)": ("fa", "bp"),
    "FA (learning rate)": ("fa", "fa"),
    "F^bio under FA": ("bio", "fa"),
    "F^Oja under FA": ("oja", "fa"),
    "BP + Oja": ("oja", "bp"),
    "F^bio under BP": ("bio", "bp"),
}
BASELINE = "BP (learning rate)"

#: Experiments 2 and 3.
DEPTHS = (2, 4, 8, 12)
WIDTH = 100
INIT_SCALES = (0.3, 1.0, 3.0)
ONLINE_TRIALS = 10
ONLINE_SEED = 0
LR = 0.01  # theta_0 of the hand-set rules: about F^bio's meta-learned 0.0093
OJA = 0.005  # the fixed small theta_9 of "+ Oja": below F^bio's meta-learned 0.0069
STEPS = (0, 25, 50, 100, 200, 400, 800)  # plus the end of the pass
LR_CHECK = (0.001, 0.003, 0.01, 0.03)  # the learning rates of the check that LR = 0.01 is not what decides
LR_CHECK_DEPTHS = (4, 12)
BIO_RESULTS = ROOT / "results" / "bio_20x600"


def rounded(x, digits: int = 6):
    """``x`` (nested lists/dicts of floats) with every float to ``digits`` significant digits:
    float32 results carry no more, and the JSON files stay small."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, list):
        return [rounded(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    return x


def cell_name(rule: str, feedback: str, K: int) -> str:
    return f"rule={rule}_feedback={feedback}_K={K}"


# ------------------------------------------------------------------------------ experiment 1


def run_sweep(workers: int) -> None:
    """Meta-train the 30 cells (resumes or skips what is done)."""
    cmd = [str(ROOT / ".venv" / "bin" / "labkit"), "sweep", str(SWEEP_FILE), "--workers", str(workers), "--quiet"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def evaluate_scarce(partial: bool = False) -> None:
    """Evaluate every finished cell on tasks from the held-out classes; write scarce_eval.json
    (cells already in it are kept) and, once every cell is in, scarce_table.csv. ``partial``:
    evaluate the cells that are finished and stop there (while the sweep still runs)."""
    path = OUT / "scarce_eval.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    have = {(r["rule"], r["trained_K"]) for r in rows}
    missing = []
    for label, (rule, feedback) in SCARCE_RULES.items():
        for K in KS:
            if (label, K) in have:
                continue
            folder = SWEEP_DIR / "cells" / cell_name(rule, feedback, K)
            if not _finished(folder):
                missing.append(folder.name)
                continue
            config = read_config(folder)
            theta = theta_matrix(folder)
            evalKs = KS if K == 50 else (K,)
            t0 = time.perf_counter()
            accs = evaluate_rule(rule, theta, feedback=feedback, K=list(evalKs), tasks=EVAL_TASKS, seed=EVAL_SEED,
                                 test_classes=TEST_CLASSES, classes_seed=config["seed"], M=config["M"], Q=config["Q"])
            print(f"{label:20s} meta-trained at K={K:2d}: evaluated at K={list(evalKs)} "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
            for k, a in accs.items():
                for protocol in (["per_K"] if k == K else []) + (["from_K50"] if K == 50 else []):
                    rows.append(dict(protocol=protocol, rule=label, trained_K=K, K=int(k),
                                     trials=int(theta.shape[0]), accuracy=rounded([float(v) for v in a])))
            write_json_atomic(path, dict(
                description="Query accuracy on new tasks from the 5 held-out digit classes; per_K: meta-trained at "
                            "K, from_K50: meta-trained at K=50, evaluated at K. Task k of a given K is the same for "
                            "every rule.",
                tasks=EVAL_TASKS, seed=EVAL_SEED, test_classes=TEST_CLASSES, rows=rows))
    if missing:
        if partial:
            print(f"{len(missing)} cells not finished yet: {', '.join(missing)}")
            return
        raise SystemExit(f"cells not finished: {', '.join(missing)}; run `scripts/beyond_paper.py scarce`")
    scarce_table(rows).to_csv(OUT / "scarce_table.csv", index=False, float_format="%.4f")
    print(f"wrote {path} and {OUT / 'scarce_table.csv'}")


def _finished(folder: Path) -> bool:
    """A cell whose run wrote its theta.json and reached the sweep's episode count."""
    if not (folder / "theta.json").is_file():
        return False
    last = (folder / "history.csv").read_text().rstrip().rsplit("\n", 1)[-1].split(",")[1]
    return int(last) >= read_config(folder)["episodes"]


def scarce_table(rows: list[dict]) -> pd.DataFrame:
    """Per protocol, K and rule: mean accuracy with its 98% bootstrap CI over tasks, and the
    paired difference to backprop (same tasks) with its 98% CI."""
    table = paired_comparison(pd.DataFrame(rows), BASELINE, by=("protocol", "K"))
    table["order"] = table["rule"].map(list(SCARCE_RULES).index)
    return table.sort_values(["protocol", "K", "order"]).drop(columns="order").reset_index(drop=True)


# ------------------------------------------------------------------------- experiments 2, 3


def online_rules() -> dict[str, tuple[str, np.ndarray]]:
    """label -> (feedback, theta rows (n, N_TERMS)); network i uses row i mod n."""
    lr, lr_oja = theta_vector({0: LR})[None], theta_vector({0: LR, 9: OJA})[None]
    return {
        "FA": ("fa", lr),
        "FA + Oja": ("fa", lr_oja),
        "BP": ("bp", lr),
        "BP + Oja": ("bp", lr_oja),
        "F^bio (meta-learned)": ("fa", theta_matrix(BIO_RESULTS)),
    }


def run_online() -> None:
    """Experiments 2 and 3 (resumes from deep_init.json: finished configurations are kept)."""
    path = OUT / "deep_init.json"
    done = json.loads(path.read_text())["runs"] if path.is_file() else []

    def save(runs: list[dict]) -> None:
        r = runs[-1]
        final = np.asarray(r["accuracy"])[:, -1]
        print(f"init {r['init_scale']:3.1f}x depth {r['depth']:2d} {r['rule']:22s} final accuracy "
              f"{np.nanmean(final):.3f} ({sum(r['diverged'])} diverged)", flush=True)
        write_json_atomic(path, dict(
            description="One online pass (batch 1) over the digits stream (1497 images, 10 classes); accuracy on "
                        "300 held-out digits; weight_norm (T, S, L): ||W_l||_F; effective_rank (T, S, L-1): hidden "
                        "activations on the 300 held-out digits.",
            trials=ONLINE_TRIALS, seed=ONLINE_SEED, width=WIDTH, lr=LR, oja=OJA,
            bio_theta_from="results/bio_20x600", runs=rounded(runs)))

    runs = online_study(online_rules(), DEPTHS, INIT_SCALES, WIDTH, ONLINE_TRIALS, ONLINE_SEED, STEPS, done=done,
                        on_result=save)
    online_study_table(runs).to_csv(OUT / "deep_init.csv", index=False, float_format="%.4f")
    print(f"wrote {path} and {OUT / 'deep_init.csv'}")


def run_lr_check() -> None:
    """Does the choice LR = 0.01 decide experiment 2? FA, FA + Oja, BP, BP + Oja at 4 and 12
    hidden layers (1x Xavier) with learning rates LR_CHECK (resumes from deep_lr.json)."""
    path = OUT / "deep_lr.json"
    done = json.loads(path.read_text())["runs"] if path.is_file() else []
    rules = {}
    for lr in LR_CHECK:
        for label, (feedback, theta) in online_rules().items():
            if label.startswith("F^bio"):
                continue
            theta = theta.copy()
            theta[:, 0] = lr
            rules[f"{label}, lr {lr:g}"] = (feedback, theta)

    def save(runs: list[dict]) -> None:
        r = runs[-1]
        print(f"depth {r['depth']:2d} {r['rule']:24s} final accuracy {np.nanmean(np.asarray(r['accuracy'])[:, -1]):.3f} "
              f"({sum(r['diverged'])} diverged)", flush=True)
        write_json_atomic(path, dict(description="As deep_init.json, at 1x Xavier, with several learning rates.",
                                     trials=ONLINE_TRIALS, seed=ONLINE_SEED, width=WIDTH, oja=OJA, runs=rounded(runs)))

    runs = online_study(rules, LR_CHECK_DEPTHS, (1.0,), WIDTH, ONLINE_TRIALS, ONLINE_SEED, STEPS, done=done,
                        on_result=save)
    online_study_table(runs).to_csv(OUT / "deep_lr.csv", index=False, float_format="%.4f")
    print(f"wrote {path} and {OUT / 'deep_lr.csv'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["scarce", "evaluate", "online", "all"],
                   help="scarce: sweep + evaluation; evaluate: evaluation only (of the finished cells, while "
                        "the sweep runs); online: experiments 2-3")
    p.add_argument("--workers", type=int, default=2, help="Dask workers for the sweep (default 2)")
    a = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if a.what in ("scarce", "all"):
        run_sweep(a.workers)
    if a.what in ("scarce", "evaluate", "all"):
        evaluate_scarce(partial=a.what == "evaluate")
    if a.what in ("online", "all"):
        run_online()
        run_lr_check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
