"""Every paper result at the paper's scale (20 trials x 600 episodes), from one commit.

The runs of ``results/paper/`` (docs/reproduction.md, "At the paper's scale"):

* every rule of the paper and every pathway added as a plug-in: FA, BP and DFA with the
  learning rate only, F^eHebb, F^Oja, F^bio, F^pool (proximal L1, lambda = 0.1), and
  sign-symmetry (uSF, frSF) and DRTP with the learning rate only and with F^bio;
* the two-stage selection: the terms F^pool keeps in at least 80% of its trials
  (:func:`labkit.results.term_survival`) are meta-learned again without L1 (``pool_refit``);
* Table 1: the 784-130-70-10 network with the eHebb term given to each of the 8 subsets of its
  3 weight layers, theta meta-learned per configuration (``table1_<layers>``, e.g.
  ``table1_2-3`` has eHebb in weight layers 2 and 3, ``table1_none`` in none).

**One commit.** The first run (or ``--pin``) pins the commit: every run is made by the labkit
code of that commit, checked out (``git worktree``) in ``runs/paper-code``, so later commits
to the library do not mix into the set. The tree must be clean when the pin is taken. Every
``config.json`` records the commit, the command line and the versions; the tests check that
all folders of ``results/paper/`` record one commit and a clean tree.

Each run checkpoints; running the script again resumes the unfinished run and skips finished
ones, so the set can be made over several sittings. Usage (from the repository root)::

    .venv/bin/python scripts/paper_scale.py --list          # the runs and their state
    .venv/bin/python scripts/paper_scale.py --table         # results/README.md's table of the finished runs
    .venv/bin/python scripts/paper_scale.py                 # run what is missing, in order
    .venv/bin/python scripts/paper_scale.py fa_lr bio       # only these
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("results") / "paper"  # relative, so config.json's command reads the same everywhere
CODE = ROOT / "runs" / "paper-code"
TRIALS, EPISODES, SEED = 20, 600, 0
COMMON = ["--trials", str(TRIALS), "--episodes", str(EPISODES), "--seed", str(SEED), "--workers", "2",
          "--compile", "on", "--chunk", "5", "--quiet"]
POOL_L1 = ["--l1", "proximal", "--lam", "0.1"]
KEEP = 0.8  # the share of trials a term must survive in to be refitted

# The order is the order of importance: the main comparison first, Table 1 last.
RUNS: dict[str, list[str]] = {
    "fa_lr": ["--rule", "fa"],
    "bp_lr": ["--rule", "bp"],
    "bio": ["--rule", "bio"],
    "pool": ["--rule", "pool", *POOL_L1],
    "ehebb": ["--rule", "ehebb"],
    "oja": ["--rule", "oja"],
    "dfa_lr": ["--rule", "dfa"],
    "pool_refit": [],  # --rule: the terms selected from "pool", filled in when it is done
    **{f"{fb}_{r}": ["--rule", "fa" if r == "lr" else "bio", "--feedback", fb]
       for fb in ("usf", "frsf", "drtp") for r in ("lr", "bio")},
}
TABLE1_HIDDEN = "130,70"
for mask in range(8):  # bit l-1 set: eHebb in weight layer l
    layers = [l for l in (1, 2, 3) if mask >> (l - 1) & 1]
    name = "table1_" + ("-".join(map(str, layers)) or "none")
    RUNS[name] = ["--hidden", TABLE1_HIDDEN,
                  "--rule", "/".join("0,2" if l in layers else "0" for l in (1, 2, 3))]


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def state(name: str) -> str:
    """'done', 'partial' (a checkpoint to resume) or 'missing'."""
    folder = ROOT / OUT / name
    history = folder / "history.csv"
    if (folder / "theta.json").is_file() and history.is_file() and not (folder / "parts").exists():
        import pandas as pd

        # a diverged trial's rows stop early, so look at the furthest episode of any trial
        if int(pd.read_csv(history, usecols=["episode"])["episode"].max()) == EPISODES:
            return "done"
    return "partial" if folder.exists() else "missing"


def pinned_commit() -> str:
    """The commit of the runs already made (they must agree), else that of an existing
    ``runs/paper-code`` checkout (``--pin`` made it), else HEAD of a clean tree."""
    commits = set()
    for cfg in sorted((ROOT / OUT).glob("*/config.json")):
        commits.add(json.loads(cfg.read_text())["versions"]["git_commit"])
    if len(commits) > 1:
        sys.exit(f"results/paper mixes commits {sorted(commits)}; remove the runs of the wrong one")
    if commits:
        return commits.pop()
    if (CODE / ".git").exists():
        return _git("rev-parse", "HEAD", cwd=CODE)
    if _git("status", "--porcelain", "--untracked-files=no"):
        sys.exit("the first paper-scale run pins the commit: commit or stash your changes first")
    return _git("rev-parse", "HEAD")


def checkout(commit: str) -> Path:
    """``runs/paper-code`` at ``commit`` (a detached git worktree), made if missing."""
    if not (CODE / ".git").exists():
        CODE.parent.mkdir(exist_ok=True)
        _git("worktree", "add", "--detach", str(CODE), commit)
    if _git("rev-parse", "HEAD", cwd=CODE) != commit:
        sys.exit(f"{CODE} is not at the pinned commit {commit[:10]}; remove it (git worktree remove) and rerun")
    return CODE


def arguments(name: str) -> list[str]:
    if name != "pool_refit":
        return RUNS[name]
    if state("pool") != "done":
        raise RuntimeError("pool_refit needs the finished 'pool' run")
    sys.path.insert(0, str(CODE))
    from labkit.results import term_survival

    sel = term_survival(ROOT / OUT / "pool", keep=KEEP)
    print(f"pool_refit: terms surviving L1 in >= {KEEP:.0%} of {sel['trials']} trials: {sel['selected']} "
          f"(counts {sel['survived']})", flush=True)
    return ["--rule", ",".join(map(str, sel["selected"]))]


def run(name: str, code: Path) -> int:
    folder = OUT / name
    argv = ["discover", *COMMON, *arguments(name), "--out", str(folder)]
    if state(name) == "partial":
        argv.append("--resume")
    env = dict(os.environ, PYTHONPATH=str(code))  # the pinned checkout's labkit, here and on the workers
    print("labkit " + " ".join(argv), flush=True)
    return subprocess.run([str(ROOT / ".venv" / "bin" / "labkit"), *argv], cwd=ROOT, env=env).returncode


def print_table(names: list[str]) -> None:
    """The finished runs among ``names``, in the set's order, as ``scripts/summarize.py`` prints
    them; ``results/README.md`` carries this table and a test checks that the two agree."""
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "scripts" / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    summarize.main([str(ROOT / OUT / n) for n in RUNS if n in names and state(n) == "done"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"runs to make (default: all missing), of: {', '.join(RUNS)}")
    p.add_argument("--list", action="store_true", help="list the runs and their state, run nothing")
    p.add_argument("--table", action="store_true",
                   help="print the finished runs' table (scripts/summarize.py, in the order above), run nothing")
    p.add_argument("--pin", action="store_true", help="pin the commit now (check it out in runs/paper-code), run nothing")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    names = a.names or list(RUNS)
    if a.list:
        for n in RUNS:
            print(f"{n:14s} {state(n):8s} {' '.join(RUNS[n]) or '(the terms selected from pool)'}")
        return 0
    if a.table:
        print_table(names)
        return 0
    code = checkout(pinned_commit())
    if a.pin:
        print(f"pinned {_git('rev-parse', 'HEAD', cwd=code)} in {code}")
        return 0
    for n in names:
        if state(n) == "done":
            continue
        rc = run(n, code)
        if rc != 0:
            print(f"{n} stopped (exit {rc}); rerun the script to resume it", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
