"""Print the README's results table from the committed result folders.

    .venv/bin/python scripts/summarize.py results/fa_lr results/bp_lr ...

For each run: trials x episodes, final meta-accuracy (labkit.results.final_accuracy: per
trial the mean of its last 10 episodes, diverged trials left out; mean over trials with a 98%
bootstrap CI, 500 resamples, resampling seed 0), final alignment angles alpha_l and
orthonormality errors E_l (labkit.results.final_values, the same averaging, then the mean
over trials), mean final theta of the active terms, guarded steps and diverged trials.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.results import final_accuracy, final_values, read_config, read_history, read_theta  # noqa: E402


def main(folders: list[str]) -> None:
    print("| run | rule / feedback | trials x episodes | final meta-accuracy (98% CI) | alpha_1..alpha_{L-1} (deg) "
          "| E_1..E_L | final theta (mean) | guarded steps | diverged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        df = read_history(folder)
        cfg = read_config(folder)
        th = read_theta(folder)
        L = len(cfg["sizes"]) - 1
        m, lo, hi = final_accuracy(df)
        alphas = [np.nanmean(final_values(df, f"alpha_{l}")) for l in range(1, L)]
        orthos = [np.nanmean(final_values(df, f"ortho_{l}")) for l in range(1, L + 1)]
        theta = ", ".join(f"θ{k.split('_')[1]}={v:.2g}" for k, v in th["mean"].items())
        guarded = int((df.guarded.fillna("") != "").sum() - df.diverged.sum())
        print(f"| {Path(folder).name} | {cfg['rule']} / {cfg['feedback']} | {df.trial.nunique()} x {df.episode.max()} "
              f"| {100 * m:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) | {', '.join(f'{a:.0f}' for a in alphas)} "
              f"| {', '.join(f'{o:.2g}' for o in orthos)} | {theta} | {guarded} | {int(df.diverged.sum())} |")


if __name__ == "__main__":
    main(sys.argv[1:])
