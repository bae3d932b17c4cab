"""Print the README's results table from the committed result folders.

    .venv/bin/python scripts/summarize.py results/fa_lr results/bp_lr ...

For each run: trials x episodes, final meta-accuracy (labkit.results.final_accuracy: per
trial the mean of its last 10 episodes, diverged trials left out; mean over trials with a 98%
bootstrap CI, 500 resamples, resampling seed 0), final alignment angles alpha_l and
orthonormality errors E_l (labkit.results.final_values, the same averaging, then the mean
over trials), mean final theta (and phi, for plastic feedback) of the active terms, guarded steps and diverged trials.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.results import run_table  # noqa: E402


def _fmt(row, prefix: str, fmt: str) -> str:
    return ", ".join(format(v, fmt) for k, v in row.items() if k.startswith(prefix) and np.isfinite(v))


def main(folders: list[str]) -> None:
    print("| run | rule / feedback | trials x episodes | final meta-accuracy (98% CI) | alpha_1..alpha_{L-1} (deg) "
          "| E_1..E_L | final theta (mean) | guarded steps | diverged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _, r in run_table(folders).iterrows():
        coef = sorted((k for k in r.index if k.startswith(("theta_", "phi_")) and np.isfinite(r[k])),
                      key=lambda k: (k.startswith("phi_"), int(k.split("_")[1])))
        theta = ", ".join(f"{'θ' if k.startswith('theta') else 'φ'}{k.split('_')[1]}={r[k]:.2g}" for k in coef)
        print(f"| {r.run} | {r.rule} / {r.feedback} | {r.trials} x {r.episodes} "
              f"| {100 * r.accuracy:.1f}% ({100 * r.ci_low:.1f}-{100 * r.ci_high:.1f}) | {_fmt(r, 'alpha_', '.0f')} "
              f"| {_fmt(r, 'ortho_', '.2g')} | {theta} | {r.guarded} | {r.diverged} |")


if __name__ == "__main__":
    main(sys.argv[1:])
