"""Print the README's results table from the committed result folders.

    .venv/bin/python scripts/summarize.py results/fa_lr results/bp_lr ...

For each run: trials x episodes, final meta-accuracy (per trial the mean of its last 10
episodes; mean over trials with a 98% bootstrap CI, 500 resamples), final alignment angles
alpha_l and orthonormality errors E_l (same averaging), mean final theta of the active
terms, guarded steps and diverged trials.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.results import pivot_trials, read_config, read_history, read_theta  # noqa: E402
from labkit.stats import bootstrap_ci  # noqa: E402


def final(df, column: str, last: int = 10) -> np.ndarray:
    """Per-trial mean of the last ``last`` finite values of ``column``: (trials,)."""
    _, values, _ = pivot_trials(df, column)
    out = []
    for row in values:
        row = row[np.isfinite(row)]
        out.append(row[-last:].mean() if len(row) else np.nan)
    return np.array(out)


def main(folders: list[str]) -> None:
    print("| run | rule / feedback | trials x episodes | final meta-accuracy (98% CI) | alpha_1..alpha_{L-1} (deg) "
          "| E_1..E_L | final theta (mean) | guarded steps | diverged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        df = read_history(folder)
        cfg = read_config(folder)
        th = read_theta(folder)
        L = len(cfg["sizes"]) - 1
        acc = final(df, "meta_accuracy")
        m, lo, hi = bootstrap_ci(acc, seed=0)
        alphas = [np.nanmean(final(df, f"alpha_{l}")) for l in range(1, L)]
        orthos = [np.nanmean(final(df, f"ortho_{l}")) for l in range(1, L + 1)]
        theta = ", ".join(f"θ{k.split('_')[1]}={v:.2g}" for k, v in th["mean"].items())
        guarded = int((df.guarded.fillna("") != "").sum() - df.diverged.sum())
        print(f"| {Path(folder).name} | {cfg['rule']} / {cfg['feedback']} | {df.trial.nunique()} x {df.episode.max()} "
              f"| {100 * m:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) | {', '.join(f'{a:.0f}' for a in alphas)} "
              f"| {', '.join(f'{o:.2g}' for o in orthos)} | {theta} | {guarded} | {int(df.diverged.sum())} |")


if __name__ == "__main__":
    main(sys.argv[1:])
