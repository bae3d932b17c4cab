"""The ``labkit`` command: ``discover``, ``evaluate`` and ``figures``.

``labkit discover`` with no flags meta-learns the pool rule with feedback alignment on the
offline digits dataset (the README's main job). Every flag is validated before any work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_TRIALS = 4
DEFAULT_EPISODES = 200


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as '170,130,100,70', got {text!r}")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return vals


def _positive_or(text: str, flag: str, words: tuple[str, ...], keep: object) -> object:
    """A positive number, or ``keep`` when ``text`` is one of ``words``."""
    if text.lower() in words:
        return keep
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{flag} takes a positive number or '{words[0]}', got {text!r}")
    return v


def _clip(text: str) -> float | None:
    return _positive_or(text, "--clip", ("off", "none", "0"), None)


def _scale(text: str) -> float | str:
    return _positive_or(text, "--input-scale", ("auto",), "auto")


def _theta(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--theta takes comma-separated numbers, got {text!r}")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    from .data import DATASETS

    p.add_argument("--dataset", default="digits", choices=DATASETS, help="dataset (default: offline digits)")
    p.add_argument("--data-root", default=None, help="folder with torchvision's layout (default: $LABKIT_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset (needs internet)")
    p.add_argument("--input-scale", type=_scale, default="auto", help="pixel scale: 'auto' (digits: match MNIST's mean ink) or a number")
    p.add_argument("--hidden", type=_int_list, default=(170, 130, 100, 70), help="hidden layer sizes (default 170,130,100,70)")
    p.add_argument("--M", type=int, default=5, help="classes per task (default 5)")
    p.add_argument("--K", type=int, default=50, help="training images per class (default 50)")
    p.add_argument("--Q", type=int, default=10, help="query images per class (default 10)")
    p.add_argument("--test-classes", type=int, default=0, help="classes held out of meta-training (default 0)")


def build_parser() -> argparse.ArgumentParser:
    from .feedback import FEEDBACK_KINDS
    from .learner import GRAD_MODES
    from .rules import NAMED_RULES

    parser = argparse.ArgumentParser(
        prog="labkit",
        description="Meta-learn plasticity rules with random feedback pathways "
        "(Shervani-Tabar & Rosenbaum, Nat. Commun. 2023).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="meta-learn a plasticity rule (the main job)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_flags(d)
    d.add_argument("--rule", default="pool", help=f"named rule ({', '.join(NAMED_RULES)}) or terms like '0,2,9'")
    d.add_argument("--terms", default=None, help="same as --rule with a term list, e.g. '0,2,9'")
    d.add_argument("--feedback", default=None, choices=FEEDBACK_KINDS, help="feedback pathway (default: from the rule, else fa)")
    d.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="meta-training episodes")
    d.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="independent trials, run batched")
    d.add_argument("--lam", "--lambda", dest="lam", type=float, default=None, help="L1 strength (default: 1e-3 for pool, else 0)")
    d.add_argument("--l1", default="coupled", choices=("coupled", "proximal"),
                   help="how L1 acts: coupled (lam*sign(theta) added to the meta-gradient, the paper's "
                        "loss) or proximal (soft-thresholding after each Adam step; lam in units of Adam's step)")
    d.add_argument("--meta-lr", type=float, default=None,
                   help="Adam learning rate on theta (default: 3e-4 for pool, else 1e-3)")
    d.add_argument("--seed", type=int, default=0, help="one seed fixes everything")
    d.add_argument("--out", default=None, help="results folder (default: runs/<rule>_<feedback>_<dataset>_s<seed>)")
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    d.add_argument("--checkpoint-every", type=int, default=25, help="episodes between checkpoints")
    d.add_argument("--grad-mode", default="adjoint", choices=GRAD_MODES,
                   help="meta-gradient: adjoint (hand-derived reverse pass, fastest), reverse (autograd, "
                        "the reference) or forward (jvp; memory flat in K)")
    d.add_argument("--compile", action="store_true",
                   help="torch.compile the adjoint's steps (faster for long runs; compiling takes "
                        "a minute or two the first time and needs a C++ compiler)")
    d.add_argument("--clip", type=_clip, default=10.0, help="clip meta-gradients above this many times the recent median norm ('off' to disable)")
    d.add_argument("--explosive", default="skip", choices=("skip", "clip"),
                   help="a meta-gradient above --clip x the recent median: skip the step, or clip it")
    d.add_argument("--warmup", type=int, default=None,
                   help="episodes of linear meta learning-rate warm-up (default: 20 for rules with several terms, else 0)")
    d.add_argument("--no-skip-nonfinite", dest="skip_nonfinite", action="store_false",
                   help="stop a trial at its first non-finite meta-gradient instead of skipping the step")
    d.add_argument("--no-term-scaling", dest="term_scaling", action="store_false",
                   help="use the same Adam step for every term (the paper's plain Adam) instead of "
                        "slowing the terms that are larger than the pseudo-gradient")
    d.add_argument("--patience", type=int, default=10, help="consecutive non-finite episodes before a trial is stopped")
    d.add_argument("--rollback", type=int, default=3,
                   help="after this many non-finite episodes in a row, roll the trial's theta back 10-20 episodes "
                        "and halve its meta learning rate (0: never; default 3)")
    d.add_argument("--rollback-explosive", type=int, default=5,
                   help="roll back (as --rollback) when this many of a trial's last 10 meta-gradients were explosive "
                        "(0: never; default 5)")
    d.add_argument("--max-rollbacks", type=int, default=3, help="rollbacks per trial before --patience decides (default 3)")
    d.add_argument("--remap-labels", action="store_true", help="label tasks 0..M-1 (M outputs) instead of dataset class ids")
    d.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    d.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores); with --workers, threads per worker (default: cores / workers)")
    d.add_argument("--workers", type=int, default=1,
                   help="processes that compute the trials' meta-gradients in parallel, chunk by chunk "
                        "(2 on a 2-core CPU runs many trials ~1.5-2x faster than threads; default 1)")
    d.add_argument("--chunk", type=int, default=4,
                   help="trials per batched inner loop; more trials run chunk by chunk (default 4, fastest on a laptop CPU)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="online-train fresh networks with given rules on new tasks",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_flags(e)
    e.add_argument("--results", nargs="*", default=[], help="results folders whose final theta to evaluate")
    e.add_argument("--rule", action="append", default=[], help="a rule to evaluate with --theta (repeatable)")
    e.add_argument("--theta", action="append", type=_theta, default=[],
                   help="theta for the matching --rule: 10 numbers, or one per term of the rule")
    e.add_argument("--feedback", action="append", default=[], help="feedback for the matching --rule (default from rule)")
    e.add_argument("--tasks", type=int, default=50, help="new tasks per rule")
    e.add_argument("--seed", type=int, default=1000, help="seed of the evaluation tasks")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")

    f = sub.add_parser("figures", help="paper-style figures from results folders")
    f.add_argument("folders", nargs="+", help="results folders (each with history.csv)")
    f.add_argument("--labels", nargs="*", default=None, help="one label per folder")
    f.add_argument("--out", default="figures", help="output folder (default: figures)")
    f.add_argument("--prefix", default="", help="file name prefix")
    f.add_argument("--window", type=int, default=10, help="moving-average window (episodes)")
    return parser


def _fail(msg: str) -> int:
    print(f"labkit: error: {msg}", file=sys.stderr)
    return 2


def cmd_discover(a: argparse.Namespace) -> int:
    from .data import CorruptDatasetError, DatasetNotFoundError
    from .meta import CheckpointError, DivergenceError, MetaConfig, MetaTrainer

    rule = a.terms if a.terms is not None else a.rule
    cfg = MetaConfig(
        dataset=a.dataset, data_root=a.data_root, download=a.download, input_scale=a.input_scale,
        rule=rule, feedback=a.feedback, hidden=a.hidden, M=a.M, K=a.K, Q=a.Q,
        remap_labels=a.remap_labels, test_classes=a.test_classes, episodes=a.episodes, trials=a.trials,
        lam=a.lam, l1=a.l1, meta_lr=a.meta_lr, seed=a.seed, grad_mode=a.grad_mode, compile=a.compile, clip=a.clip, explosive=a.explosive, warmup=a.warmup,
        skip_nonfinite=a.skip_nonfinite, term_scaling=a.term_scaling, patience=a.patience, rollback=a.rollback, max_rollbacks=a.max_rollbacks, rollback_explosive=a.rollback_explosive, checkpoint_every=a.checkpoint_every,
        dtype=a.dtype, threads=a.threads, chunk=a.chunk, workers=a.workers,
    )
    try:
        res = cfg.resolved()
        out = a.out or f"runs/{str(rule).replace(',', '-')}_{res.feedback}_{a.dataset}_s{a.seed}"
        trainer = MetaTrainer(cfg, out=out, resume=a.resume)
    except (ValueError, FileExistsError, DatasetNotFoundError, CorruptDatasetError, CheckpointError) as exc:
        return _fail(str(exc))
    print(f"labkit discover: rule {trainer.rule.name} (terms {list(trainer.terms)}), feedback {res.feedback}, "
          f"{a.dataset} {a.M}-way K={a.K} Q={a.Q}, net {'-'.join(map(str, trainer.sizes))}, "
          f"{res.trials} trials x {res.episodes} episodes, lambda={res.lam:g}, seed {a.seed} -> {out}"
          + (f" (resuming after episode {trainer.episode})" if trainer.episode else ""))
    try:
        summary = trainer.run(progress=not a.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted after episode {trainer.completed_episodes}; checkpoint and theta.json saved in "
              f"{out}; continue with the same command plus --resume", file=sys.stderr)
        return 130
    except DivergenceError as exc:
        return _fail(str(exc))
    print(summary.text())
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .data import CorruptDatasetError, DatasetNotFoundError
    from .meta import evaluate_rule, load_theta_from_results
    from .rules import N_TERMS, make_rule
    from .stats import bootstrap_ci

    jobs = []
    try:
        for folder in a.results:
            theta, cfg = load_theta_from_results(folder)
            if len(theta) == 0:
                return _fail(f"every trial in {folder} diverged; nothing to evaluate")
            jobs.append((Path(folder).name, cfg["rule"], cfg["feedback"], theta, cfg.get("hidden", a.hidden)))
        if a.theta and len(a.theta) != len(a.rule):
            return _fail(f"give one --theta per --rule ({len(a.rule)} rules, {len(a.theta)} thetas)")
        if a.feedback and len(a.feedback) != len(a.rule):
            return _fail(f"give one --feedback per --rule, or none ({len(a.rule)} rules, {len(a.feedback)} feedbacks)")
        for k, rule in enumerate(a.rule):
            terms = make_rule(rule, len(a.hidden) + 1).terms
            vals = a.theta[k] if a.theta else None
            if vals is None:
                return _fail(f"--rule {rule} needs a --theta (e.g. --theta 0.01 for learning rate 0.01)")
            if len(vals) == N_TERMS:
                theta = np.array(vals)
            elif len(vals) == len(terms):
                theta = np.zeros(N_TERMS)
                theta[list(terms)] = vals
            else:
                return _fail(f"--theta for rule {rule} needs {len(terms)} numbers (terms {list(terms)}) or {N_TERMS}, got {len(vals)}")
            fb = a.feedback[k] if a.feedback else None
            jobs.append((f"{rule}" + (f"/{fb}" if fb else ""), rule, fb, theta, a.hidden))
        if not jobs:
            return _fail("nothing to evaluate: give --results FOLDER or --rule NAME --theta VALUES")
        report = {}
        for label, rule, fb, theta, hidden in jobs:
            accs = evaluate_rule(rule, theta, fb, a.dataset, a.data_root, hidden, a.M, a.K, a.Q, a.tasks, a.seed,
                                 a.test_classes, a.input_scale)
            mean, lo, hi = bootstrap_ci(accs, seed=a.seed)
            report[label] = {"mean": float(mean), "ci_low": float(lo), "ci_high": float(hi), "tasks": len(accs)}
            print(f"{label:30s} query accuracy {100 * mean:5.1f}%  (98% CI {100 * lo:.1f}-{100 * hi:.1f}%, {len(accs)} tasks)")
    except (ValueError, FileNotFoundError, DatasetNotFoundError, CorruptDatasetError) as exc:
        return _fail(str(exc))
    if a.json:
        from .results import write_json_atomic

        write_json_atomic(a.json, report)
    return 0


def cmd_figures(a: argparse.Namespace) -> int:
    from .plots import figures_from_results

    if a.labels and len(a.labels) != len(a.folders):
        return _fail(f"give one label per folder ({len(a.folders)} folders, {len(a.labels)} labels)")
    try:
        paths = figures_from_results([Path(f) for f in a.folders], Path(a.out), a.labels or None, a.prefix,
                                     window=a.window)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    for p in paths:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"discover": cmd_discover, "evaluate": cmd_evaluate, "figures": cmd_figures}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
