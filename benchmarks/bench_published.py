#!/usr/bin/env python
"""Published implementation vs labkit, side by side: one F^bio meta-training episode, one thread.

Times, in one invocation and on the same machine, (a) the published implementation of
Shervani-Tabar & Rosenbaum (Nat. Commun. 2023; github.com/NeuralDynamicsAndComputing/
MetaLearning-Plasticity) and (b) labkit, both on the rule F^bio (pseudo-gradient + eHebb + Oja,
labkit's rule "bio" = terms 0, 2, 9; the published ``--vec 1 2``) with fixed random feedback
(feedback alignment; the published ``--fbk fix``), network 784-170-130-100-70-47, M=5 ways,
K=50 online samples per class (250 plasticity steps), Q=10 query images per class, float32,
``torch.set_num_threads(1)``, on EMNIST-shaped random data (28x28 pixels uniform [0,1)*0.75,
47 classes; timing does not depend on pixel values, and no data set is read).

The published code is NOT part of this repository (license and policy). Give the folder of a
checkout of it with ``--published PATH`` or ``$LABKIT_PUBLISHED``; its modules are imported from
there at run time, unmodified. Without a path its rows are reported as skipped.

(a) Published: its ``MetaLearner.train()`` runs as written, on synthetic episodes in the format its
    ``DataProcess`` expects (what its EMNIST ``DataLoader`` yields). One episode = re-initialise the
    weights, 250 online updates with its ``plasticity_rule``, the query loss, its ``meta_stats``
    and log files, the meta-gradient by autograd (``loss.backward()``) and its Adam step. One trial
    per episode, so its time per episode is its time per trial-episode. (Shims, not edits: torch
    >= 2.x lacks ``torch.nn.utils._stateless``, so a module whose ``functional_call`` is
    ``torch.func.functional_call`` is put in ``sys.modules`` first; its final ``Plot`` is skipped.)
(b) labkit, ``--trials`` (16) trials batched as ``labkit discover --rule bio --trials 16`` runs them:
    * "discover episode": ``MetaTrainer.step()`` at discover's defaults (trials in chunks of
      ``MetaConfig.chunk``, draw of tasks, weights and feedback, exact meta-gradient, guards, Adam,
      the per-episode measurements), on a synthetic EMNIST-shaped data set; at the default
      (``--compile auto``, which compiles a 200-episode run when a C++ compiler is present),
      eager (``--compile off``) and compiled (``--compile on``);
    * "meta-gradient unit": bench_meta.py's unit (``init_weights`` + ``init_feedback`` +
      ``meta_gradient`` + Adam on theta), with the same chunking, modes "adjoint" and "compiled".
    Time per trial-episode = median episode (unit) time / trials.

Every measurement runs in a fresh subprocess (one thread), after ``--warmup`` untimed episodes
(compiled rows: at least 1, which includes compilation); the median of ``--episodes`` timed ones.
Writes ``benchmarks/results/published_vs_labkit_<hostname>.json`` and prints a table.

Run from the repository root (see benchmarks/README.md for obtaining the published code):

    .venv/bin/python benchmarks/bench_published.py --published /tmp/published
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (HERE, REPO):  # bench_meta, and this checkout's labkit
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PUBLISHED_ENV = "LABKIT_PUBLISHED"
PUBLISHED_URL = "https://github.com/NeuralDynamicsAndComputing/MetaLearning-Plasticity"
PUBLISHED_FILES = ("main.py", "optim.py", "dataset.py", "utils.py")
PAPER_SIZES = (784, 170, 130, 100, 70, 47)
N_CLASSES = 47
TARGET_SPEEDUP = 25.0  # labkit's default (discover, compile auto) vs the published code, per trial-episode
DATA_NOTE = ("EMNIST-shaped random data: 28x28 pixels uniform [0,1)*0.75, 47 classes "
             "(the same distribution on both sides; timing only, no data set read)")
MODES = ("default", "adjoint", "compiled")


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------- child: published
def check_published(path: str | os.PathLike) -> str | None:
    """None if ``path`` holds the published implementation's modules, else why not."""
    p = Path(path)
    if not p.is_dir():
        return f"{p} is not a folder"
    missing = [f for f in PUBLISHED_FILES if not (p / f).is_file()]
    if missing:
        return f"{p} lacks {', '.join(missing)} (expected a checkout of {PUBLISHED_URL})"
    return None


def published_single(cfg: dict) -> dict:
    """Run the published ``MetaLearner.train()`` for warmup + episodes episodes; time each."""
    import contextlib
    import io
    import tempfile
    import types

    _one_thread()
    import numpy as np
    import torch

    path = Path(cfg["path"]).resolve()
    why = check_published(path)
    if why:
        return dict(ok=False, error=why)
    try:  # removed from torch (2.x); the published main.py imports it
        from torch.nn.utils import _stateless  # noqa: F401
        shim = False
    except ImportError:
        mod = types.ModuleType("torch.nn.utils._stateless")
        mod.functional_call = torch.func.functional_call
        sys.modules["torch.nn.utils._stateless"] = mod
        torch.nn.utils._stateless = mod
        shim = True
    sys.path.insert(0, str(path))
    res_dir = tempfile.mkdtemp(prefix="published_res_")
    os.chdir(res_dir)  # anything it writes relative to the working folder stays in the scratch folder
    import main as pub_main  # the published modules, from `path`

    for name in ("main", "optim", "dataset", "utils"):
        f = Path(sys.modules[name].__file__).resolve()
        if f.parent != path:
            return dict(ok=False, error=f"module {name} was imported from {f}, not from {path}")

    M, K, Q, dim = int(cfg["M"]), int(cfg["K"]), int(cfg["Q"]), 28
    n_warm, n_time = int(cfg["warmup"]), int(cfg["episodes"])
    n_ep = n_warm + n_time
    torch.manual_seed(int(cfg["seed"]))
    np.random.seed(int(cfg["seed"]))  # its DataProcess shuffles with np.random

    # What its DataLoader(EmnistDataset, batch_size=M) yields: (M, K, 28, 28) images in [0, 1],
    # (M, K) int64 class ids, (M, Q, 28, 28), (M, Q).
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
    episodes = []
    for _ in range(n_ep):
        cls = torch.randperm(N_CLASSES, generator=gen)[:M]
        x_trn = torch.rand(M, K, dim, dim, generator=gen) * 0.75
        x_qry = torch.rand(M, Q, dim, dim, generator=gen) * 0.75
        episodes.append((x_trn, cls[:, None].repeat(1, K), x_qry, cls[:, None].repeat(1, Q)))

    class TimedEpisodes:
        """The meta-training data set; notes the time whenever train() asks for the next episode."""

        def __init__(self):
            self.marks: list[float] = []
            self.cpu_marks: list[float] = []  # CPU time of this (one-thread) process

        def __iter__(self):
            for ep in episodes:
                self.marks.append(time.perf_counter())
                self.cpu_marks.append(time.process_time())
                yield ep
            self.marks.append(time.perf_counter())  # end of the last episode
            self.cpu_marks.append(time.process_time())

        def __len__(self):
            return len(episodes)

    data = TimedEpisodes()
    args = argparse.Namespace(
        device=torch.device("cpu"), gpu_mode=0, seed=int(cfg["seed"]), database="emnist", dim=dim,
        test_name="", episodes=n_ep, K=K, Q=Q, M=M, lamb=0.0, lr_meta=1e-3, a=1e-3, res=res_dir,
        avg_window=10, vec=["1", "2"], fbk="fix", res_dir=res_dir, evl=False,
    )
    learner = pub_main.MetaLearner(data, args)
    learner.plot = lambda *a, **k: None  # its figures after the last episode: not part of an episode

    adapt = learner.OptimAdpt
    steps: list[int] = [0] * n_ep
    inner_end: list[float] = [0.0] * n_ep

    def counted(*a, **k):
        out = adapt(*a, **k)
        e = len(data.marks) - 1
        steps[e] += 1
        inner_end[e] = time.perf_counter()
        return out

    learner.OptimAdpt = counted
    theta_names = [n for n, p in learner.model.named_parameters() if "fwd" in n]
    theta_start = [float(p) for p in learner.Theta]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        learner.train()
    lines = [l for l in buf.getvalue().splitlines() if l.startswith("Train Episode")]
    theta_end = [float(p) for p in learner.Theta]
    fb_random = not any(torch.equal(getattr(learner.model, f"fk{i}").weight, getattr(learner.model, f"fc{i}").weight)
                        for i in range(1, 6))

    marks = data.marks
    ep_s = [marks[i + 1] - marks[i] for i in range(n_ep)]
    cpu_s = [data.cpu_marks[i + 1] - data.cpu_marks[i] for i in range(n_ep)]
    inner_s = [inner_end[i] - marks[i] for i in range(n_ep)]
    meta_s = [marks[i + 1] - inner_end[i] for i in range(n_ep)]
    losses = []
    for l in lines:
        m = re.search(r"Loss: (\S+)", l)
        losses.append(float(m.group(1)) if m else float("nan"))
    timed = slice(n_warm, n_ep)
    med = statistics.median(ep_s[timed])
    return dict(
        ok=True,
        path=str(path),
        stateless_shim=shim,
        vec=args.vec, fbk=args.fbk, M=M, K=K, Q=Q,
        rule="F^bio: -Theta[0] e_l y_{l-1}^T (pseudo-grad) - Theta[1] e_l e_{l-1}^T (eHebb, vec '1') "
             "+ Theta[2] (y_l y_{l-1}^T - y_l y_l^T W_l) (Oja, vec '2')",
        theta_names=theta_names, theta_start=theta_start, theta_end=theta_end,
        feedback_random=fb_random,
        adapt_steps_per_episode=steps,
        full_inner_loop=all(s == M * K for s in steps),
        s_per_episode=ep_s[timed], s_per_episode_median=med, s_per_trial_episode=med,
        cpu_s_per_trial_episode=statistics.median(cpu_s[timed]),
        s_inner_loop_median=statistics.median(inner_s[timed]),
        s_meta_step_median=statistics.median(meta_s[timed]),
        s_first_episode=ep_s[0], warmup=n_warm, episodes=n_time,
        log_first=lines[0] if lines else None, log_last=lines[-1] if lines else None,
        meta_losses=losses,
        torch_threads=torch.get_num_threads(),
        res_dir=res_dir,
    )


# --------------------------------------------------------------------------- child: labkit discover episode
def trainer_single(cfg: dict) -> dict:
    """Time ``MetaTrainer.step()`` (labkit discover's episode) on a synthetic EMNIST-shaped data set."""
    from unittest import mock

    _one_thread()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # benchmark this checkout's labkit
    import torch

    import labkit
    import labkit.meta as meta
    from labkit.data import Dataset

    per_class = int(cfg["K"]) + int(cfg["Q"]) + 40
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
    images = torch.rand(N_CLASSES * per_class, 784, generator=gen) * 0.75
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    fake = Dataset("emnist", images, labels, N_CLASSES, 1.0)
    # "default": what `labkit discover --trials T` picks with no other flag (compile "auto" for its
    # 200 episodes); "adjoint": eager (--compile off); "compiled": --compile on
    compile_ = {"default": "auto", "adjoint": False, "compiled": True}[cfg["mode"]]
    episodes = 200 if cfg["mode"] == "default" else 10**6
    conf = meta.MetaConfig(dataset="emnist", rule="bio", trials=int(cfg["T"]), K=int(cfg["K"]),
                           episodes=episodes, threads=1, compile=compile_, seed=int(cfg["seed"]))
    with mock.patch.object(meta, "load_dataset", lambda *a, **k: fake):
        tr = meta.MetaTrainer(conf, out=None)
    torch.set_num_threads(1)  # what run() does with threads=1
    n_warm, n_time = int(cfg["warmup"]), int(cfg["episodes"])
    times, cpu, rows_all = [], [], []
    for k in range(n_warm + n_time):
        t0, c0 = time.perf_counter(), time.process_time()
        rows = tr.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        rows_all.append(rows)
    T = int(cfg["T"])
    timed = times[n_warm:]
    med = statistics.median(timed)
    last = rows_all[-1]
    losses = [r["meta_loss"] for rows in rows_all[n_warm:] for r in rows]
    return dict(
        cfg, ok=True,
        s_per_unit=timed, s_per_unit_median=med, s_per_trial_episode=med / T, s_first_unit=times[0],
        cpu_s_per_trial_episode=statistics.median(cpu[n_warm:]) / T,
        sizes=list(tr.sizes), terms=list(tr.terms), feedback=tr.config.feedback, chunk=tr.config.chunk,
        grad_mode=tr.config.grad_mode, compile=tr.config.compile,
        theta_trial0_last=[last[0][f"theta_{r}"] for r in tr.terms] if last else None,
        loss_finite=all(l == l and abs(l) != float("inf") for l in losses),
        query_loss_mean=statistics.fmean(losses) if losses else None,
        torch_threads=torch.get_num_threads(), labkit_path=str(Path(labkit.__file__).parent),
    )


# --------------------------------------------------------------------------- parent
def run_child(kind: str, cfg: dict, timeout: float) -> dict:
    """One measurement in a fresh interpreter with one thread; never raises."""
    if kind == "unit":
        import bench_meta

        return bench_meta.run_child(cfg, timeout)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return dict(cfg, ok=False, error=f"timed out after {timeout} s")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-4:]
        return dict(cfg, ok=False, error=f"exit code {p.returncode}: " + " | ".join(tail))
    res = json.loads(lines[-1])
    res["child_wall_s"] = time.perf_counter() - t0
    return res


def fmt(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3f}" if x >= 0.01 else f"{x:.2e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--published", default=None, metavar="PATH",
                    help=f"folder of a checkout of the published code ({PUBLISHED_URL}); "
                         f"default ${PUBLISHED_ENV}; none: its rows are skipped")
    ap.add_argument("--episodes", type=int, default=5, help="timed episodes (labkit: units) per row (default 5)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed episodes first (default 2; compiled rows at least 1, which includes compiling)")
    ap.add_argument("--trials", type=int, default=16, help="labkit trials per episode, batched (default 16)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="labkit modes: default (discover's --compile auto), adjoint (eager, --compile off), "
                         "compiled (--compile on) (default all three)")
    ap.add_argument("--K", type=int, default=50,
                    help="online samples per class, both sides (default 50 = the paper; smaller only for smoke tests)")
    ap.add_argument("--no-units", dest="units", action="store_false",
                    help="skip the bench_meta meta-gradient unit rows (keep the discover-episode rows)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement (default 1800)")
    ap.add_argument("--out", default=None,
                    help="JSON output (default benchmarks/results/published_vs_labkit_<hostname>.json)")
    ap.add_argument("--child", nargs=2, default=None, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child is not None:  # internal: one measurement, JSON on stdout
        fn = {"published": published_single, "trainer": trainer_single}[a.child[0]]
        print(json.dumps(fn(json.loads(a.child[1]))), flush=True)
        return 0
    if a.episodes < 1 or a.warmup < 0 or a.trials < 1 or a.K < 1:
        ap.error("--episodes, --trials and --K must be >= 1 and --warmup >= 0")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"--modes: choose from {', '.join(MODES)}")

    import bench_meta

    info = bench_meta.machine_info()
    info["threads_per_measurement"] = 1
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", info.get("hostname") or "") or "local"
    out = Path(a.out) if a.out else HERE / "results" / f"published_vs_labkit_{host}.json"
    from labkit.meta import MetaConfig

    chunk = MetaConfig().chunk
    paper = a.K == 50
    settings = dict(rule="F^bio (labkit 'bio' = terms 0,2,9; published --vec 1 2)", feedback="fa (published --fbk fix)",
                    sizes=list(PAPER_SIZES), M=5, K=a.K, Q=10, dtype="float32", threads=1, trials=a.trials,
                    chunk=chunk, episodes=a.episodes, warmup=a.warmup, modes=modes, data=DATA_NOTE,
                    paper_configuration=paper, seed=0)
    result: dict = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": info, "settings": settings, "published": None, "labkit": []}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out)

    print(f"published vs labkit, F^bio, 1 thread, on {info['cpu_model']} ({info['usable_cores']} usable cores, "
          f"torch {info.get('torch')}); load average {info.get('loadavg_at_start')}")
    print(f"network {'-'.join(map(str, PAPER_SIZES))}, M=5, K={a.K}, Q=10; {DATA_NOTE}")
    print(f"median of {a.episodes} timed episode(s) after {a.warmup} warm-up episode(s); each row in a fresh process",
          flush=True)

    # (a) the published implementation
    path = a.published or os.environ.get(PUBLISHED_ENV) or None
    if not path:
        result["published"] = dict(ok=False, skipped=True, reason=(
            f"no path to the published code: pass --published PATH or set ${PUBLISHED_ENV} to a checkout of "
            f"{PUBLISHED_URL} (it is not part of this repository)"))
    elif check_published(path):
        result["published"] = dict(ok=False, skipped=True, reason=check_published(path))
    else:
        cfg = dict(path=str(Path(path).resolve()), M=5, K=a.K, Q=10, warmup=a.warmup, episodes=a.episodes, seed=1)
        r = run_child("published", cfg, a.timeout)
        r.setdefault("skipped", False)
        result["published"] = r
    pub = result["published"]
    if pub.get("ok"):
        print(f"  [published] {pub['path']}: {fmt(pub['s_per_episode_median'])} s/episode "
              f"(inner loop {fmt(pub['s_inner_loop_median'])} s + query, stats, backward, Adam "
              f"{fmt(pub['s_meta_step_median'])} s); adaptation steps per episode {sorted(set(pub['adapt_steps_per_episode']))}"
              f", full inner loop: {pub['full_inner_loop']}")
        print(f"      Theta {pub['theta_names']}: start {pub['theta_start']}, end {[f'{v:.6f}' for v in pub['theta_end']]}"
              f"; vec {pub['vec']}, fbk {pub['fbk']}, random feedback: {pub['feedback_random']}")
        print(f"      its log, last episode: {pub['log_last']}", flush=True)
    elif pub.get("skipped"):
        print(f"  [published] SKIPPED: {pub['reason']}", flush=True)
    else:
        print(f"  [published] FAILED: {pub.get('error')}", flush=True)
    save()

    # (b) labkit
    base = dict(T=a.trials, K=a.K, M=5, Q=10, seed=0)
    jobs = []
    for m in modes:
        w = max(1, a.warmup) if m != "adjoint" else a.warmup
        label = {"default": "default: --compile auto", "adjoint": "--compile off", "compiled": "--compile on"}[m]
        jobs.append(("trainer", f"labkit discover episode ({label})", dict(base, mode=m, warmup=w, episodes=a.episodes)))
    if a.units:
        for m in [m for m in modes if m != "default"]:
            w = max(1, a.warmup) if m == "compiled" else a.warmup
            jobs.append(("unit", f"labkit meta-gradient unit ({m})",
                         dict(sizes=list(PAPER_SIZES), feedback="fa", dtype="float32", rule="bio", device="cpu",
                              threads=1, workers=1, chunk=chunk, mode=m, T=a.trials, M=5, K=a.K, Q=10,
                              warmup=max(1, w), repeats=a.episodes, seed=0)))
    for kind, name, cfg in jobs:
        r = run_child(kind, cfg, a.timeout)
        r.update(name=name, kind=kind, mode=cfg["mode"])
        result["labkit"].append(r)
        if r.get("ok"):
            print(f"  [{name}] {fmt(r['s_per_trial_episode'])} s/trial-episode ({fmt(r['s_per_unit_median'])} s per "
                  f"{a.trials}-trial episode; first {fmt(r['s_first_unit'])} s)", flush=True)
        else:
            print(f"  [{name}] FAILED: {r.get('error')}", flush=True)
        save()

    # speed-ups and the target
    pub_s = pub.get("s_per_trial_episode") if pub.get("ok") else None
    pub_cpu = pub.get("cpu_s_per_trial_episode") if pub.get("ok") else None
    speed = {}
    for r in result["labkit"]:
        if r.get("ok") and pub_s:
            r["speedup_vs_published"] = pub_s / r["s_per_trial_episode"]
            if pub_cpu and r.get("cpu_s_per_trial_episode"):
                r["speedup_vs_published_cpu_time"] = pub_cpu / r["cpu_s_per_trial_episode"]
            speed[r["name"]] = {"wall": r["speedup_vs_published"], "cpu_time": r.get("speedup_vs_published_cpu_time")}
    default = next((r for r in result["labkit"] if r.get("ok") and r["kind"] == "trainer" and r["mode"] == "default"), None)
    if default is None or pub_s is None:
        state = "not measured" + ("" if pub_s else " (published rows skipped or failed)")
    elif not paper:
        state = "not applicable (not the paper configuration, K != 50)"
    else:
        state = "met" if default["speedup_vs_published"] >= TARGET_SPEEDUP else "not met"
    result["speedups"] = speed
    result["target"] = dict(what=f"labkit's default (discover episode, --compile auto, {a.trials} trials) >= "
                                 f"{TARGET_SPEEDUP:.0f}x faster than the published code per trial-episode",
                            target=TARGET_SPEEDUP, measured=default and default.get("speedup_vs_published"),
                            measured_cpu_time=default and default.get("speedup_vs_published_cpu_time"),
                            status=state)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}x"

    head = ["implementation", "s/trial-episode", "s/episode", "speed-up", "CPU s/trial-ep", "speed-up (CPU)"]
    rows = [head]
    if pub.get("ok"):
        rows.append(["published main.py (1 trial/episode, autograd)", fmt(pub_s), fmt(pub["s_per_episode_median"]),
                     "1.0x", fmt(pub_cpu), "1.0x"])
    else:
        rows.append(["published main.py", "skipped" if pub.get("skipped") else "FAILED", "-", "-", "-", "-"])
    for r in result["labkit"]:
        if r.get("ok"):
            rows.append([f"{r['name']}, {a.trials} trials", fmt(r["s_per_trial_episode"]), fmt(r["s_per_unit_median"]),
                         x(r.get("speedup_vs_published")), fmt(r.get("cpu_s_per_trial_episode")),
                         x(r.get("speedup_vs_published_cpu_time"))])
        else:
            rows.append([r["name"], "FAILED", "-", "-", "-", "-"])
    widths = [max(len(x[i]) for x in rows) for i in range(len(head))]
    print()
    for x in rows:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths))))
    print("(s = wall-clock seconds, median; CPU s = CPU time of the one-thread process, less sensitive to a loaded "
          "machine; speed-up = published / labkit per trial-episode)")
    print(f"\ntarget: {result['target']['what']}: {state}"
          + (f" ({result['target']['measured']:.1f}x)" if result["target"]["measured"] else ""))
    if not pub.get("ok"):
        print(f"published: {pub.get('reason') or pub.get('error')}")
    print(f"load average at end: {result['machine']['loadavg_at_end']}")
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
