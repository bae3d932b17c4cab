"""Record the golden files that tests/test_golden.py compares the library with, bit for bit.

The files in this folder were made from commit 0d6c6627bd4e3d717bd8aec8edf580ed3976295a
(the library before the module-layout refactor), on the 2-core CPU machine that runs the
tests, with torch 2.14.1 and two torch threads (as tests/conftest.py sets), by::

    git -C /work/main worktree add /tmp/golden_src 0d6c6627bd4e3d717bd8aec8edf580ed3976295a
    cd /tmp/golden_src && PYTHONPATH=/tmp/golden_src /work/main/.venv/bin/python \\
        /work/main/tests/golden/record.py /work/main/tests/golden

Each run is ``MetaTrainer(MetaConfig(**RUNS[name]), out=folder).run(progress=False)`` on the
offline digits dataset, the default network and settings, seed 0; its ``history.csv`` is
copied to ``<name>.csv``. ``evaluate_rule.json`` holds ``evaluate_rule(**EVALUATIONS[k])``
for each feedback pathway k: the query accuracies, as JSON floats (shortest repr, which
reads back to the identical float).

tests/test_golden.py re-runs the first episodes of each run (all of them with
LABKIT_GOLDEN_FULL=1) and compares them with the recorded rows of those episodes: a run's
first episodes do not depend on its length. (One and two threads gave the same numbers.)

Re-record only after a deliberate change of the numbers (and say why in the commit):
run this script with the new code, from the repository root, into this folder.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

RECORDED_FROM = "0d6c6627bd4e3d717bd8aec8edf580ed3976295a"
THREADS = 2

# name -> MetaConfig keyword arguments (everything else at its default)
RUNS: dict[str, dict] = {
    "pool_fa_2x20": dict(dataset="digits", rule="pool", seed=0, trials=2, episodes=20),
    "bio_fa_2x20": dict(dataset="digits", rule="bio", seed=0, trials=2, episodes=20),
    "fa_fa_2x20": dict(dataset="digits", rule="fa", seed=0, trials=2, episodes=20),
    "bp_bp_2x20": dict(dataset="digits", rule="bp", seed=0, trials=2, episodes=20),
    "dfa_dfa_2x20": dict(dataset="digits", rule="dfa", seed=0, trials=2, episodes=20),
    "ehebb_bp_2x10": dict(dataset="digits", rule="ehebb", feedback="bp", seed=0, trials=2, episodes=10),
}

# F^bio's terms 0 (pseudo-gradient), 2 (eHebb) and 9 (Oja); zeros elsewhere
BIO_THETA = [1e-3, 0.0, -1e-4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5e-4]
# feedback pathway -> evaluate_rule keyword arguments (everything else at its default)
EVALUATIONS: dict[str, dict] = {
    fb: dict(rule="bio", theta=BIO_THETA, feedback=fb, dataset="digits", tasks=8) for fb in ("fa", "bp", "dfa")
}
EVALUATION_FILE = "evaluate_rule.json"


def run_history(name: str, folder: Path, episodes: int | None = None) -> str:
    """The text of ``history.csv`` of run ``name``, trained into ``folder`` (must not hold a
    run); with ``episodes``, only that many of the run's episodes (tests/test_golden.py)."""
    from labkit.meta import MetaConfig, MetaTrainer

    config = {**RUNS[name], **({} if episodes is None else {"episodes": episodes})}
    MetaTrainer(MetaConfig(**config), out=folder).run(progress=False)
    return (folder / "history.csv").read_text()


def evaluations() -> dict[str, list[float]]:
    """feedback -> the query accuracies of ``evaluate_rule`` as Python floats (exact)."""
    try:
        from labkit.evaluation import evaluate_rule
    except ImportError:  # the code the records were made with (before meta.py was split)
        from labkit.meta import evaluate_rule

    return {fb: [float(a) for a in evaluate_rule(**kw)] for fb, kw in EVALUATIONS.items()}


def main(out: Path) -> None:
    import torch

    import labkit

    torch.set_num_threads(THREADS)
    print(f"labkit from {labkit.__file__}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    out.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            text = run_history(name, Path(tmp) / name)
        (out / f"{name}.csv").write_text(text)
        print(f"{name}.csv: {text.count(chr(10)) - 1} rows")
    (out / EVALUATION_FILE).write_text(json.dumps(evaluations(), indent=1) + "\n")
    print(f"{EVALUATION_FILE} written")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_FOLDER")
    main(Path(sys.argv[1]))
