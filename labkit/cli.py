"""The ``labkit`` command: ``discover``, ``evaluate`` and ``figures``.

``labkit discover`` with no flags meta-learns the pool rule with feedback alignment on the
offline digits dataset (the README's main job). Every flag is validated before any work.
Its flags are :class:`labkit.meta.MetaConfig`'s fields, by name (``--meta-lr`` sets
``meta_lr``), with MetaConfig's defaults unless listed in :data:`DISCOVER_DEFAULTS`; the
feedback pathways offered are those registered in :mod:`labkit.pathways`, the terms those of
:mod:`labkit.terms`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .feedback import FEEDBACK_KINDS
from .feedback_terms import FEEDBACK_TERMS, NAMED_FEEDBACK_RULES
from .meta import MetaConfig, command_line
from .terms import N_TERMS, NAMED_RULES, TERMS

DEFAULT_TRIALS = 4
DEFAULT_EPISODES = 200
#: Where ``labkit discover``'s defaults differ from MetaConfig's (a run of minutes, not hours).
DISCOVER_DEFAULTS: dict[str, Any] = {"trials": DEFAULT_TRIALS, "episodes": DEFAULT_EPISODES}
#: MetaConfig fields that do not take the value of the argparse dest of the same name.
RENAMED: dict[str, Callable[[argparse.Namespace], Any]] = {
    "rule": lambda a: a.terms if a.terms is not None else a.rule,  # --terms is --rule with a term list
    "workers": lambda a: (auto_workers(a.trials, a.episodes, a.chunk) if getattr(a, "workers", 1) == "auto"
                          else a.workers),
}
#: MetaConfig fields without a flag (they keep MetaConfig's default on the command line).
NOT_ON_THE_COMMAND_LINE: frozenset[str] = frozenset({"theta0"})


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage of ``discover`` alone is a
    screenful): what is wrong, and where the flags are listed."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _default(name: str) -> Any:
    """``labkit discover``'s default for MetaConfig field ``name``."""
    if name in DISCOVER_DEFAULTS:
        return DISCOVER_DEFAULTS[name]
    return next(f.default for f in dataclasses.fields(MetaConfig) if f.name == name)


def config_from_args(a: argparse.Namespace) -> MetaConfig:
    """The MetaConfig of parsed ``labkit discover`` arguments: each field from the dest of the
    same name (or :data:`RENAMED`); fields without a flag keep their defaults."""
    kw = {}
    for f in dataclasses.fields(MetaConfig):
        if f.name in RENAMED:
            kw[f.name] = RENAMED[f.name](a)
        elif hasattr(a, f.name):
            kw[f.name] = getattr(a, f.name)
    return MetaConfig(**kw)


def _feedback_help(what: str) -> str:
    from . import pathways

    return f"{what}: " + ", ".join(f"{k} ({pathways.get(k).label})" for k in FEEDBACK_KINDS)


def _feedback_rule_help() -> str:
    names = "; ".join(f"{k} = {{{', '.join(map(str, v))}}}" for k, v in NAMED_FEEDBACK_RULES.items())
    terms = "; ".join(f"{t.index} {t.name}: G = {t.equation}" for t in FEEDBACK_TERMS)
    return ("make the feedback matrices plastic, B_l <- B_l + sum_s phi_s G^s, with phi meta-learned beside "
            f"theta (starting at 0; feedback 'fa' only; docs/plastic-feedback.md): a name ({names}) or a list "
            f"of feedback terms such as '0,1'. The terms: {terms}. Default: fixed feedback")


def _workers(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes a number or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers must be >= 1, got {n}")
    return n


def auto_workers(trials: int, episodes: int, chunk: int = 4) -> int:
    """``--workers auto``: for a run of at least COMPILE_AUTO_MIN trial-episodes, one worker per
    usable core, at most one per chunk of ``chunk`` trials (a compiled run splits only between
    chunks: labkit.runs.split_trials); else 1 (starting workers costs seconds)."""
    from .meta import COMPILE_AUTO_MIN

    if trials * episodes < COMPILE_AUTO_MIN:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, -(-trials // chunk)))


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


def _init_scale(text: str) -> float:
    from .networks import check_init_scale

    try:
        return check_init_scale(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--init-scale takes a number > 0 (a multiple of the Xavier scale), "
                                         f"got {text!r}") from None


def _k_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--K takes a positive integer or a list such as '1,5,10,25,50', got {text!r}")
    return vals


def _clip(text: str) -> float | None:
    return _positive_or(text, "--clip", ("off", "none", "0"), None)


def _scale(text: str) -> float | str:
    return _positive_or(text, "--input-scale", ("auto",), "auto")


def _theta(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--theta takes comma-separated numbers, got {text!r}")


def _add_data_flags(p: argparse.ArgumentParser, k_list: bool = False) -> None:
    from .data import DATASETS

    p.add_argument("--dataset", default=_default("dataset"), choices=DATASETS, help="dataset (default: offline digits)")
    p.add_argument("--data-root", default=None, help="folder with torchvision's layout (default: $LABKIT_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset (needs internet)")
    p.add_argument("--input-scale", type=_scale, default=_default("input_scale"),
                   help="pixel scale: 'auto' (digits: match MNIST's mean ink) or a number")
    hidden = _default("hidden")
    p.add_argument("--hidden", type=_int_list, default=hidden,
                   help=f"hidden layer sizes (default {','.join(map(str, hidden))})")
    p.add_argument("--M", type=int, default=_default("M"), help="classes per task")
    if k_list:  # labkit evaluate: one result per K, on tasks drawn from the same seeds
        p.add_argument("--K", type=_k_list, default=(_default("K"),),
                       help="training images per class; a list such as 1,5,10,25,50 evaluates each")
    else:
        p.add_argument("--K", type=int, default=_default("K"), help="training images per class")
    p.add_argument("--Q", type=int, default=_default("Q"), help="query images per class")
    p.add_argument("--test-classes", type=int, default=_default("test_classes"), help="classes held out of meta-training")


def build_parser() -> argparse.ArgumentParser:
    from .learner import GRAD_MODES

    parser = _Parser(
        prog="labkit",
        description="Meta-learn plasticity rules with random feedback pathways "
        "(Shervani-Tabar & Rosenbaum, Nat. Commun. 2023).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="meta-learn a plasticity rule (the main job)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_flags(d)
    d.add_argument("--init-scale", type=_init_scale, default=_default("init_scale"),
                   help="draw the forward weights at this multiple of the Xavier scale")
    terms = ", ".join(f"{t.index} {t.name}" for t in TERMS)
    d.add_argument("--rule", default=_default("rule"),
                   help=f"named rule ({', '.join(NAMED_RULES)}), term numbers like '0,2,9' (0..{N_TERMS - 1}), "
                        "or one term list per weight layer separated by '/', like '0,2/0/0' (Table 1)")
    d.add_argument("--terms", default=None, help=f"same as --rule with a list of term numbers, e.g. '0,2,9'; the terms: {terms}")
    d.add_argument("--feedback", default=None, choices=FEEDBACK_KINDS, metavar="PATHWAY",
                   help=_feedback_help("feedback pathway (default: from the rule, else fa)"))
    d.add_argument("--feedback-rule", default=_default("feedback_rule"), metavar="RULE", help=_feedback_rule_help())
    d.add_argument("--episodes", type=int, default=_default("episodes"), help="meta-training episodes")
    d.add_argument("--trials", type=int, default=_default("trials"), help="independent trials, run batched")
    d.add_argument("--lam", "--lambda", dest="lam", type=float, default=None, help="L1 strength (default: 1e-3 for pool, else 0)")
    d.add_argument("--l1", default=_default("l1"), choices=("coupled", "proximal"),
                   help="how L1 acts: coupled (lam*sign(theta) added to the meta-gradient, the paper's "
                        "loss) or proximal (soft-thresholding after each Adam step; lam in units of Adam's step)")
    d.add_argument("--meta-lr", type=float, default=None,
                   help="Adam learning rate on theta (default: 3e-4 for pool, else 1e-3)")
    d.add_argument("--seed", type=int, default=_default("seed"), help="one seed fixes everything")
    d.add_argument("--out", default=None, help="results folder (default: runs/<rule>_<feedback>_<dataset>_s<seed>)")
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    d.add_argument("--checkpoint-every", type=int, default=_default("checkpoint_every"), help="episodes between checkpoints")
    d.add_argument("--grad-mode", default=_default("grad_mode"), choices=GRAD_MODES,
                   help="meta-gradient: adjoint (hand-derived reverse pass, fastest), reverse (autograd, "
                        "the reference) or forward (jvp; memory flat in K)")
    d.add_argument("--compile", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the adjoint's steps: 'auto' compiles runs long enough to pay back "
                        "the compilation when a C++ compiler is present; '--compile' alone is 'on'; 'off' "
                        "keeps the eager path (compiled kernels round differently in the last bits)")
    d.add_argument("--clip", type=_clip, default=_default("clip"),
                   help="clip meta-gradients above this many times the recent median norm ('off' to disable)")
    d.add_argument("--explosive", default=_default("explosive"), choices=("skip", "clip"),
                   help="a meta-gradient above --clip x the recent median: skip the step, or clip it")
    d.add_argument("--warmup", type=int, default=None,
                   help="episodes of linear meta learning-rate warm-up (default: 20 for rules with several terms, else 0)")
    d.add_argument("--no-skip-nonfinite", dest="skip_nonfinite", action="store_false",
                   help="stop a trial at its first non-finite meta-gradient instead of skipping the step")
    d.add_argument("--no-term-scaling", dest="term_scaling", action="store_false",
                   help="use the same Adam step for every term (the paper's plain Adam) instead of "
                        "slowing the terms that are larger than the pseudo-gradient")
    d.add_argument("--patience", type=int, default=_default("patience"),
                   help="consecutive non-finite episodes before a trial is stopped")
    d.add_argument("--rollback", type=int, default=_default("rollback"),
                   help="after this many non-finite episodes in a row, roll the trial's theta back 10-20 episodes "
                        "and halve its meta learning rate (0: never)")
    d.add_argument("--rollback-explosive", type=int, default=_default("rollback_explosive"),
                   help="roll back (as --rollback) when this many of a trial's last 10 meta-gradients were explosive "
                        "(0: never)")
    d.add_argument("--max-rollbacks", type=int, default=_default("max_rollbacks"),
                   help="rollbacks per trial before --patience decides")
    d.add_argument("--remap-labels", action="store_true", help="label tasks 0..M-1 (M outputs) instead of dataset class ids")
    d.add_argument("--dtype", default=_default("dtype"), choices=("float32", "float64"))
    d.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default 1, so that the numbers do not depend on the machine's "
                        "cores or on --workers; more threads in one process change the last bits)")
    d.add_argument("--workers", type=_workers, default="auto",
                   help="run on a local Dask cluster of this many single-threaded worker processes, each "
                        "meta-training a part of the trials (docs/scale-out.md); 1: this process only; "
                        "'auto': for runs of 400+ trial-episodes one per usable core, at most one per chunk of "
                        "trials (same numbers either way)")
    d.add_argument("--scheduler", default=None,
                   help="address of a running Dask scheduler (tcp://HOST:PORT) to run on instead of this "
                        "machine; default $LABKIT_SCHEDULER")
    d.add_argument("--split", default="trials", choices=("trials", "episode"),
                   help="how --workers share the run: 'trials' (each worker meta-trains a part of the trials "
                        "from start to end; fastest) or 'episode' (every episode's trial chunks farmed out)")
    d.add_argument("--chunk", type=int, default=_default("chunk"),
                   help="trials per batched inner loop; more trials run chunk by chunk (4 is fastest on a laptop CPU)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="online-train fresh networks with given rules on new tasks",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_flags(e, k_list=True)
    e.add_argument("--init-scale", type=_init_scale, default=None,
                   help="draw the forward weights at this multiple of the Xavier scale (default: a results "
                        "folder's init_scale, else 1)")
    e.add_argument("--results", nargs="*", default=[],
                   help="results folders whose final theta (and phi, for plastic feedback) to evaluate")
    e.add_argument("--rule", action="append", default=[], help="a rule to evaluate with --theta (repeatable)")
    e.add_argument("--theta", action="append", type=_theta, default=[],
                   help=f"theta for the matching --rule: {N_TERMS} numbers, or one per term of the rule")
    e.add_argument("--feedback", action="append", default=[], choices=FEEDBACK_KINDS, metavar="PATHWAY",
                   help=_feedback_help("feedback pathway for the matching --rule (default: from the rule, else fa)"))
    e.add_argument("--tasks", type=int, default=50, help="new tasks per rule")
    e.add_argument("--seed", type=int, default=1000, help="seed of the evaluation tasks")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")

    w = sub.add_parser("sweep", help="a grid of discover runs on Dask workers, with a table and a figure",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("file", nargs="?", default=None,
                   help="a TOML sweep file (out = \"DIR\", [base] settings, [grid] lists); flags extend it")
    w.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a setting to vary (any discover setting: rule, feedback, lam, K, seed, hidden as 16x8, "
                        "a term list as 0+2+9, ...); repeat for a grid")
    w.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="fixed",
                   help="a setting fixed for every cell (e.g. trials=4, episodes=100)")
    w.add_argument("--out", default=None, help="the sweep's folder (cells/, sweep.csv, sweep.png)")
    w.add_argument("--workers", type=int, default=1, help="local Dask workers (cells run in parallel, one per worker)")
    w.add_argument("--scheduler", default=None, help="a running Dask scheduler's address (default $LABKIT_SCHEDULER)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")

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
    from .meta import CheckpointError, DivergenceError, MetaTrainer
    from .results import FolderBusyError
    from .runs import discover
    from .workers import ClusterError, scheduler_address

    cfg = config_from_args(a)
    rule = cfg.rule
    errors = (ValueError, FileExistsError, PermissionError, DatasetNotFoundError, CorruptDatasetError,
              CheckpointError, FolderBusyError, ClusterError)
    try:
        res = cfg.resolved()
        fb_name = res.feedback + (f"+{res.feedback_rule.replace(',', '-')}" if res.feedback_rule else "")
        out = a.out or f"runs/{str(rule).replace(',', '-').replace('/', '_')}_{fb_name}_{a.dataset}_s{a.seed}"
        probe = MetaTrainer(cfg, out=None)  # validates everything (and the data) before any work
    except errors as exc:
        return _fail(str(exc))
    where = ""
    address = scheduler_address(a.scheduler)
    if address:
        where = f", on the Dask cluster at {address} (split: {a.split})"
    elif res.workers > 1:
        where = f", on {res.workers} local Dask workers (split: {a.split})"
    plastic = (f" with plastic feedback {res.feedback_rule} (terms {list(probe.feedback_terms)}, phi from 0)"
               if probe.feedback_terms else "")
    print(f"labkit discover: rule {probe.rule.name} (terms {list(probe.terms)}), feedback {res.feedback}{plastic}, "
          f"{a.dataset} {a.M}-way K={a.K} Q={a.Q}, net {'-'.join(map(str, probe.sizes))}, "
          f"{res.trials} trials x {res.episodes} episodes, lambda={res.lam:g}, seed {a.seed}{where} -> {out}"
          + (" (resuming)" if a.resume else ""))
    if a.compile == "auto" and not a.resume:
        from .meta import compile_choice

        print(f"labkit discover: {compile_choice(res)[1]}")
    try:
        summary = discover(cfg, out, resume=a.resume, scheduler=a.scheduler, split=a.split, progress=not a.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; every completed episode, the checkpoints and theta.json are saved in "
              f"{out}; continue with the same command plus --resume", file=sys.stderr)
        return 130
    except (DivergenceError, *errors) as exc:
        return _fail(str(exc))
    except RuntimeError as exc:  # a worker lost: what was computed is kept
        return _fail(str(exc))
    print(summary.text())
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    import numpy as np

    from .data import CorruptDatasetError, DatasetNotFoundError
    from .evaluation import evaluate_rule, load_phi_from_results, load_theta_from_results
    from .rules import make_rule
    from .stats import bootstrap_ci

    jobs = []
    try:
        for folder in a.results:
            theta, cfg = load_theta_from_results(folder)
            if len(theta) == 0:
                return _fail(f"every trial in {folder} diverged; nothing to evaluate")
            phi, fb_rule = load_phi_from_results(folder)  # (None, None): fixed feedback
            jobs.append((Path(folder).name, cfg["rule"], cfg["feedback"], theta, cfg.get("hidden", a.hidden),
                         a.init_scale if a.init_scale is not None else cfg.get("init_scale", 1.0), phi, fb_rule))
            note = _transfer_note(folder, cfg, a.dataset)
            if note:
                print(note, file=sys.stderr)
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
                return _fail(f"--theta for rule {rule} needs {len(terms)} numbers (terms {list(terms)}) "
                             f"or {N_TERMS}, got {len(vals)}")
            fb = a.feedback[k] if a.feedback else None
            jobs.append((f"{rule}" + (f"/{fb}" if fb else ""), rule, fb, theta, a.hidden,
                         a.init_scale if a.init_scale is not None else 1.0, None, None))
        if not jobs:
            return _fail("nothing to evaluate: give --results FOLDER or --rule NAME --theta VALUES")
        report = {}
        Ks = list(a.K) if isinstance(a.K, (tuple, list)) else [a.K]
        for label, rule, fb, theta, hidden, init_scale, phi, fb_rule in jobs:
            plastic = dict(phi=phi, feedback_rule=fb_rule)
            if len(Ks) == 1:  # today's output: one line per rule, JSON {label: {...}}
                accs = evaluate_rule(rule, theta, fb, a.dataset, a.data_root, hidden, a.M, Ks[0], a.Q, a.tasks,
                                     a.seed, a.test_classes, a.input_scale, init_scale=init_scale, **plastic)
                mean, lo, hi = bootstrap_ci(accs, seed=a.seed)
                report[label] = {"mean": float(mean), "ci_low": float(lo), "ci_high": float(hi), "tasks": len(accs)}
                print(f"{label:30s} query accuracy {100 * mean:5.1f}%  (98% CI {100 * lo:.1f}-{100 * hi:.1f}%, {len(accs)} tasks)")
                continue
            # several K: one line per (rule, K); JSON {label: {"<K>": {..., "accuracy": per task}}}
            per_k = evaluate_rule(rule, theta, fb, a.dataset, a.data_root, hidden, a.M, Ks, a.Q, a.tasks,
                                  a.seed, a.test_classes, a.input_scale, init_scale=init_scale, **plastic)
            report[label] = {}
            for K, accs in per_k.items():
                mean, lo, hi = bootstrap_ci(accs, seed=a.seed)
                report[label][str(K)] = {"K": K, "mean": float(mean), "ci_low": float(lo), "ci_high": float(hi),
                                         "tasks": len(accs), "accuracy": [float(v) for v in accs]}
                name = f"{label} K={K}"
                print(f"{name:30s} query accuracy {100 * mean:5.1f}%  (98% CI {100 * lo:.1f}-{100 * hi:.1f}%, {len(accs)} tasks)")
    except (ValueError, FileNotFoundError, DatasetNotFoundError, CorruptDatasetError) as exc:
        return _fail(str(exc))
    if a.json:
        from .results import write_json_atomic

        write_json_atomic(a.json, report)
    return 0


def _transfer_note(folder: str, cfg: dict, dataset: str) -> str | None:
    """A line saying that a rule meta-learned on one dataset is evaluated on another, with
    fresh networks sized for the latter (None when the datasets agree)."""
    trained_on = str(cfg.get("dataset", "digits"))
    if trained_on == dataset:
        return None
    sizes = cfg.get("sizes")
    was = f" (network {'-'.join(map(str, sizes))})" if sizes else ""
    return (f"labkit evaluate: {folder} was meta-trained on {trained_on}{was}; its rule is evaluated on {dataset} "
            f"with fresh networks sized for {dataset} (its image size in, its classes out): the rule transfers, "
            f"not the weights")


def cmd_sweep(a: argparse.Namespace) -> int:
    import math

    from .plots import chance_level, plot_sweep
    from .results import FolderBusyError
    from .sweep import TABLE_FILE, SweepError, load_sweep, run_sweep
    from .workers import ClusterError, scheduler_address

    try:
        sweep = load_sweep(a.file, a.grid, a.fixed, a.out)
        cells = sweep.cells()
    except SweepError as exc:
        return _fail(str(exc))
    address = scheduler_address(a.scheduler)
    where = f"the Dask cluster at {address}" if address else f"{a.workers} local Dask worker(s)"
    print(f"labkit sweep: {len(cells)} cells ({' x '.join(f'{k}: {len(v)}' for k, v in sweep.grid.items()) or 'one'})"
          f" on {where} -> {sweep.out}")
    try:
        table = run_sweep(sweep, a.workers, address, progress=not a.quiet)
    except (SweepError, PermissionError, FolderBusyError, ClusterError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished cells and every cell's checkpoint are kept in {sweep.out}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    ways = {c.config.M for c in cells}
    fig = plot_sweep(table, list(sweep.grid), chance_level(ways.pop()) if len(ways) == 1 else None)
    fig.savefig(sweep.out / "sweep.png", dpi=120, bbox_inches="tight")
    for _, r in table.iterrows():
        acc = "" if math.isnan(r["meta_accuracy"]) else (
            f"{100 * r['meta_accuracy']:5.1f}% (98% CI {100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}%)")
        print(f"  {Path(r['folder']).name:40s} {r['status']:20s} {acc}")
    print(f"table: {sweep.out / TABLE_FILE}; figure: {sweep.out / 'sweep.png'}")
    failed = [r for _, r in table.iterrows() if str(r["status"]).startswith("failed")]
    return 1 if failed else 0


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
    commands = {"discover": cmd_discover, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "figures": cmd_figures}
    # recorded in config.json as the run's command line (labkit.meta.run_command)
    with command_line(shlex.join(["labkit", *(sys.argv[1:] if argv is None else argv)])):
        return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
