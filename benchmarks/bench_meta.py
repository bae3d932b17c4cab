#!/usr/bin/env python
"""Speed and memory benchmark of labkit's meta-training episode.

Times one meta-training episode at the paper configuration: network 784-170-130-100-70-47,
M=5 classes x K=50 online samples (250 plasticity steps), Q=10 query images per class (50),
feedback alignment ("fa"), exact meta-gradient (``labkit.learner.meta_gradient``) in the
modes given by ``--modes`` ("compiled" = mode "adjoint" with ``compile=True``).

One measured unit = for T batched trials: draw fresh forward weights and feedback matrices
(``init_weights`` + ``init_feedback``), one ``meta_gradient`` call (inner loop + gradient
through it) and one Adam step on theta (included; it is negligible). The reported time is
the median over ``--repeats`` units (after ``--warmup`` untimed units) divided by T.

Inputs are random (uniform [0, 1) * 0.75) with random labels: timing does not depend on
the pixel values, and no data set is read. Every configuration runs in a fresh
subprocess of this script (``--single``), so that its peak RSS is its own.

Rows with ``workers`` > 1 time what ``labkit discover --workers W --split episode`` does: the T
trials are cut into equal chunks, a multiple of W of them, of at most 4 trials (``--chunk``'s
default), whose meta-gradients W single-threaded workers of a local Dask cluster compute in
parallel (``labkit.meta.chunked_meta_gradient``); the unit also includes shipping each chunk's
episode to its worker and the results back. (The default "trials" split of whole runs is timed
by ``benchmarks/bench_scaleout.py``.) Their peak MB is the largest worker's whole peak RSS ("abs":
torch and the compiler included), not an increase over a baseline.

Run from the repository root:

    .venv/bin/python benchmarks/bench_meta.py                 # full benchmark
    .venv/bin/python benchmarks/bench_meta.py --quick --rules fa --threads 1 --no-K-sweep
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PAPER_SIZES = (784, 170, 130, 100, 70, 47)
RULES = ("fa", "bio", "pool")
MODES = ("adjoint", "compiled", "reverse", "forward")
# Seconds per episode of the published implementation on one thread of this machine (issue).
PUBLISHED_S = {"fa": 1.0, "bio": 3.2}
# Targets (issue), seconds per trial-episode.
TARGET_BEST = {"bio": 0.12, "fa": 0.04}  # with the best batching config
TARGET_SINGLE_BIO = 0.5  # F^bio, one trial, unbatched (T=1), one thread
PROJECT_TRIAL_EPISODES = 20 * 600  # "20 trials x 600 episodes"
DATA_NOTE = "random inputs uniform[0,1)*0.75 and random labels (timing only; no data set read)"


# --------------------------------------------------------------------------- child side
def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


def run_single(cfg: dict) -> dict:
    """Run one configuration in this process and return its measurements."""
    threads = int(cfg["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # benchmark this checkout's labkit
    import torch

    torch.set_num_threads(threads)
    import labkit
    from labkit.feedback import init_feedback
    from labkit.learner import Episodic, meta_gradient
    from labkit.networks import init_weights
    from labkit.rules import make_rule
    from labkit.terms import N_TERMS

    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    dtype = getattr(torch, cfg["dtype"])
    sizes = tuple(cfg["sizes"])
    T, M, K, Q = int(cfg["T"]), int(cfg["M"]), int(cfg["K"]), int(cfg["Q"])
    n_out = sizes[-1]
    rule = make_rule(cfg["rule"], len(sizes) - 1)
    feedback = cfg["feedback"]
    mode = cfg["mode"]
    compile_ = mode == "compiled"  # the adjoint with torch.compile'd steps
    if compile_:
        mode = "adjoint"
    workers = int(cfg.get("workers", 1))
    pool = None
    if workers > 1:
        from labkit.meta import MetaConfig, chunked_meta_gradient
        from labkit.workers import connect

        cluster = connect(workers)
        pool = cluster.__enter__()  # a Dask client of a local cluster, as discover --split episode
        chunking = MetaConfig(grad_mode=mode, compile=compile_, workers=workers)  # default chunk, as discover
    chunk = int(cfg.get("chunk", 0))  # > 0 (one process): chunk trials at a time, as discover's serial path
    if pool is None and chunk > 0:
        from labkit.meta import MetaConfig, chunked_meta_gradient

        chunking = MetaConfig(grad_mode=mode, compile=compile_, chunk=chunk)

    data_gen = torch.Generator().manual_seed(int(cfg["seed"]))
    weight_gens = [torch.Generator().manual_seed(int(cfg["seed"]) * 100_003 + 17 + i) for i in range(T)]

    def draw_data():
        """Random task for T trials: M classes out of n_out, K train / Q query per class."""
        classes = torch.stack([torch.randperm(n_out, generator=data_gen)[:M] for _ in range(T)])  # (T, M)
        y_tr = classes.repeat_interleave(K, dim=1)
        order = torch.stack([torch.randperm(M * K, generator=data_gen) for _ in range(T)])
        y_tr = torch.gather(y_tr, 1, order)
        y_q = classes.repeat_interleave(Q, dim=1)
        x_tr = torch.rand(T, M * K, sizes[0], generator=data_gen, dtype=dtype) * 0.75
        x_q = torch.rand(T, M * Q, sizes[0], generator=data_gen, dtype=dtype) * 0.75
        return [t.to(device) for t in (x_tr, y_tr, x_q, y_q)]

    # theta as meta-training starts (MetaTrainer): theta_0 = 1e-3, every other term 0. Every
    # unit starts from it again (untimed reset after the Adam step): otherwise the pool's ten
    # coefficients drift by ~1e-3 per unit in the directions of random-data gradients and its
    # inner loop overflows after a few units, which leaves the work the same but the loss NaN.
    theta = torch.zeros(T, N_TERMS, dtype=dtype, device=device)
    theta[:, 0] = 1e-3
    theta_start = theta.clone()
    opt = torch.optim.Adam([theta], lr=1e-3)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def unit(data):
        """The measured unit; returns (total, init, meta_gradient, adam) seconds and the loss."""
        x_tr, y_tr, x_q, y_q = data
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        Ws = init_weights(sizes, weight_gens, dtype)
        Bs = init_feedback(feedback, sizes, weight_gens, dtype)
        if cuda:
            Ws = [W.to(device) for W in Ws]
            Bs = [B.to(device) for B in Bs]
        sync()
        t1 = time.perf_counter()
        ep = Episodic(Ws, Bs, feedback, rule, x_tr, y_tr, x_q, y_q)
        if pool is None and chunk <= 0:
            mg = meta_gradient(theta.detach(), ep, mode, compile=compile_)
        else:
            mg = chunked_meta_gradient(theta.detach(), ep, chunking, pool)
        sync()
        t2 = time.perf_counter()
        theta.grad = mg.grad.to(theta.dtype)
        opt.step()
        sync()
        t3, c3 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            theta.copy_(theta_start)
        return (t3 - t0, t1 - t0, t2 - t1, t3 - t2, c3 - c0), mg.loss

    data = draw_data()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        gpu_base = torch.cuda.memory_allocated(device)
    rss_before = _rss_bytes()
    times, losses, first = [], [], None
    n_units = int(cfg["warmup"]) + int(cfg["repeats"])
    for k in range(n_units):
        if k > 0:
            data = draw_data()  # untimed: fresh task each unit
        t, loss = unit(data)
        if first is None:
            first = t[0]  # includes torch.compile's compilation in mode "compiled"
        if k >= int(cfg["warmup"]):
            times.append(t)
            losses.append(loss)
    maxrss = _maxrss_bytes()
    worker_rss = None
    if pool is not None:
        worker_rss = max(pool.run(_maxrss_bytes).values())  # the largest worker's own peak
        cluster.__exit__(None, None, None)

    tot = [t[0] for t in times]
    med = statistics.median(tot)
    all_loss = torch.cat([l.detach().float().cpu() for l in losses])
    out = dict(cfg)
    out.update(
        ok=True,
        s_per_unit=tot,
        s_per_unit_median=med,
        s_per_trial_episode=med / T,
        s_init_median=statistics.median(t[1] for t in times) / T,
        s_meta_gradient_median=statistics.median(t[2] for t in times) / T,
        s_adam_median=statistics.median(t[3] for t in times) / T,
        cpu_s_per_trial_episode=statistics.median(t[4] for t in times) / T,  # CPU time of this process
        s_first_unit=first,
        rss_before_MB=rss_before / 2**20,
        peak_rss_MB=maxrss / 2**20,
        peak_rss_increase_MB=max(0, maxrss - rss_before) / 2**20,
        query_loss_mean=float(all_loss.mean()),
        loss_finite=bool(torch.isfinite(all_loss).all()),
        torch_threads=torch.get_num_threads(),
        workers=workers,
        peak_rss_worker_MB=None if worker_rss is None else worker_rss / 2**20,
        labkit_path=str(Path(labkit.__file__).parent),
    )
    if cuda:
        out["gpu_peak_increase_MB"] = (torch.cuda.max_memory_allocated(device) - gpu_base) / 2**20
        out["gpu_name"] = torch.cuda.get_device_name(device)
    return out


# --------------------------------------------------------------------------- parent side
def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_default_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # pragma: no cover - reported, not fatal
        info["torch"] = f"not importable: {exc}"
    return info


def parse_threads(spec: str, usable: int) -> list[int]:
    out: list[int] = []
    for s in spec.split(","):
        s = s.strip().lower()
        if not s:
            continue
        n = usable if s == "all" else int(s)
        if n < 1:
            raise SystemExit(f"--threads: thread counts must be >= 1, got {s}")
        if n not in out:
            out.append(n)
    return out


def int_list(spec: str) -> list[int]:
    return [int(s) for s in spec.split(",") if s.strip()]


def run_child(cfg: dict, timeout: float | None) -> dict:
    """Run one configuration in a fresh interpreter; never raises."""
    env = dict(os.environ)
    n = str(cfg["threads"])  # per process (workers: per worker)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return dict(cfg, ok=False, error=f"timed out after {timeout} s")
    wall = time.perf_counter() - t0
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        why = f"exit code {p.returncode}" + (" (killed: out of memory?)" if p.returncode in (-9, 137) else "")
        return dict(cfg, ok=False, error=why + (": " + " | ".join(tail) if tail else ""))
    res = json.loads(lines[-1])
    res["child_wall_s"] = wall
    return res


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2e}"


def _threads_label(r: dict) -> str:
    w = int(r.get("workers", 1))
    return f"{w} proc x {r['threads']}" if w > 1 else str(r["threads"])


def print_table(rows: list[dict], title: str, extra: tuple[str, ...] = ()) -> None:
    print(f"\n{title}")
    head = ["device", "rule", "mode", "K", "threads", "T", "s/trial-ep", "s/unit", "peak MB", "speed-up"]
    for e in extra:
        head.append(e)
    lines = [head]
    for r in rows:
        if not r.get("ok"):
            lines.append([r["device"], r["rule"], r["mode"], str(r["K"]), _threads_label(r), str(r["T"]),
                          "FAILED", r.get("error", "")[:60], "", ""])
            continue
        # the published times are for the paper episode (K=50); no comparison at other K
        pub = PUBLISHED_S.get(r["rule"]) if r["K"] == 50 else None
        mem = r.get("gpu_peak_increase_MB") if r["device"] != "cpu" else r["peak_rss_increase_MB"]
        mem_s = f"{mem:.0f}"
        if r.get("workers", 1) > 1 and r.get("peak_rss_worker_MB") is not None:
            mem_s = f"{r['peak_rss_worker_MB']:.0f} abs"
        row = [
            r["device"], r["rule"], r["mode"], str(r["K"]), _threads_label(r), str(r["T"]),
            fmt_s(r["s_per_trial_episode"]), fmt_s(r["s_per_unit_median"]), mem_s,
            f"{pub / r['s_per_trial_episode']:.1f}x" if pub else "n/a",
        ]
        if not r.get("loss_finite", True):
            row[-1] += " (non-finite loss!)"
        lines.append(row)
    widths = [max(len(l[i]) for l in lines if i < len(l)) for i in range(len(head))]
    for l in lines:
        print("  " + "  ".join(c.rjust(w) if j >= 3 else c.ljust(w) for j, (c, w) in enumerate(zip(l, widths))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default=",".join(RULES), help="comma-separated rules (default fa,bio,pool)")
    ap.add_argument("--trials", default="1,4,16", help="batched trial counts T on CPU (default 1,4,16)")
    ap.add_argument("--threads", default="1,all", help="thread counts, 'all' = usable cores (default 1,all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed units per config, after the warm-up (default 3)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed units per config first (default 3: on this CPU the first few episodes of a "
                         "process run up to 2x slower than the steady state a long run sees)")
    ap.add_argument("--K-sweep", dest="k_sweep", action=argparse.BooleanOptionalAction, default=True,
                    help="memory/time vs K for bio, T=1, 1 thread, adjoint, reverse and forward mode (default on)")
    ap.add_argument("--K-values", default="25,50,100", help="K values of the K sweep (default 25,50,100)")
    ap.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=True,
                    help="also time on the GPU if torch.cuda.is_available() (default on)")
    ap.add_argument("--cuda-trials", default="1,16,64,256", help="T values on the GPU (default 1,16,64,256)")
    ap.add_argument("--workers", default="all",
                    help="worker processes (1 thread each) for extra rows at every T >= 2 ('all' = usable "
                         "cores; 1 = no such rows; default all)")
    ap.add_argument("--modes", default="adjoint,compiled",
                    help="meta-gradient modes of the main table, from " + ",".join(MODES) +
                         " ('compiled' = adjoint with torch.compile; default adjoint,compiled)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration (default 3600)")
    ap.add_argument("--out", default=None,
                    help="JSON output (default benchmarks/results/bench_<hostname>.json)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: T in 1,4 (GPU 1,16), 1 repeat, K sweep only at K=25")
    ap.add_argument("--single", default=None, metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.single is not None:  # internal: one configuration, JSON on stdout
        print(json.dumps(run_single(json.loads(args.single))), flush=True)
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    info = machine_info()
    rules = [r.strip().lower() for r in args.rules.split(",") if r.strip()]
    trials = int_list(args.trials)
    cuda_trials = int_list(args.cuda_trials)
    repeats = args.repeats
    k_values = int_list(args.K_values)
    if args.quick:
        trials, cuda_trials, repeats, k_values = [1, 4], [1, 16], 1, [25]
    threads = parse_threads(args.threads, info["usable_cores"])
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", info.get("hostname") or "") or "local"
    out = Path(args.out) if args.out else HERE / "results" / f"bench_{host}.json"

    base = dict(sizes=list(PAPER_SIZES), M=5, K=50, Q=10, feedback="fa", dtype=args.dtype,
                warmup=max(1, args.warmup), repeats=repeats, seed=0, mode=modes[0], device="cpu")
    configs = [dict(base, rule=r, T=T, threads=n, mode=m) for r in rules for m in modes for n in threads for T in trials]
    workers = info["usable_cores"] if args.workers == "all" else int(args.workers)
    if workers > 1:
        configs += [dict(base, rule=r, T=T, threads=1, mode=m, workers=workers)
                    for r in rules for m in modes for T in trials if T >= 2]
    ksweep = ([dict(base, rule="bio", T=1, threads=1, K=K, mode=m) for K in k_values for m in ("adjoint", "reverse", "forward")]
              if args.k_sweep else [])
    cuda_cfgs = []
    if args.cuda and info.get("cuda_available"):
        cuda_cfgs = [dict(base, rule=r, T=T, threads=1, device="cuda", mode="adjoint") for r in rules for T in cuda_trials]

    print(f"labkit meta-training episode benchmark on {info['cpu_model']} "
          f"({info['usable_cores']} usable cores, torch {info.get('torch')})")
    print(f"network {'-'.join(map(str, PAPER_SIZES))}, M=5, K=50 (250 online steps), Q=10 (50 query images), "
          f"feedback fa, meta-gradient modes {','.join(modes)}, {args.dtype}")
    print(f"data: {DATA_NOTE}")
    print("unit = init_weights + init_feedback + meta_gradient + Adam step (Adam included) for T trials; "
          f"time = median of {repeats} unit(s) after {base['warmup']} warm-up unit(s), / T; peak MB = peak RSS increase of the "
          "child process over its RSS before the first episode (GPU rows: peak allocated GPU memory)")
    print(f"{len(configs)} CPU config(s), {len(ksweep)} K-sweep config(s), "
          f"{len(cuda_cfgs) if cuda_cfgs else 'no'} GPU config(s); each in a fresh subprocess", flush=True)

    result: dict = {
        "machine": info,
        "settings": dict(base, modes=modes, rules=rules, trials=trials, threads=threads, cuda_trials=cuda_trials,
                         k_values=k_values, quick=args.quick, data=DATA_NOTE, adam_step_included=True,
                         published_s_per_episode_one_thread=PUBLISHED_S),
        "cpu": [], "k_sweep": [], "cuda": [],
    }
    if not (args.cuda and info.get("cuda_available")):
        result["cuda_note"] = "no CUDA device" if args.cuda else "CUDA section disabled (--no-cuda)"

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out)

    t_start = time.perf_counter()
    for section, cfgs in (("cpu", configs), ("k_sweep", ksweep), ("cuda", cuda_cfgs)):
        for cfg in cfgs:
            res = run_child(cfg, args.timeout)
            result[section].append(res)
            status = (f"{fmt_s(res['s_per_trial_episode'])} s/trial-ep, peak +{res['peak_rss_increase_MB']:.0f} MB"
                      if res.get("ok") else f"FAILED: {res.get('error')}")
            print(f"  [{section}] {cfg['device']} rule={cfg['rule']} mode={cfg['mode']} K={cfg['K']} "
                  f"threads={_threads_label(cfg)} T={cfg['T']}: {status}", flush=True)
            save()

    print_table(result["cpu"], "CPU, paper configuration (K=50)")
    if result["k_sweep"]:
        print_table(result["k_sweep"], "Memory and time vs K (rule bio, T=1, 1 thread)")
    comp = [r for r in result["cpu"] if r.get("ok") and r["mode"] == "compiled"]
    if comp:
        print("\nFirst (warm-up) unit in mode compiled, which includes compilation: " + ", ".join(
            f"{r['rule']} T={r['T']} thr={_threads_label(r)}: {r['s_first_unit']:.0f} s" for r in comp))
    if result["cuda"]:
        print_table(result["cuda"], f"GPU ({info.get('cuda_device')})")
    elif args.cuda:
        print("\nGPU: no CUDA device")

    # best batching per rule, projections and targets
    summary: dict = {"best": {}, "projection_s_20x600": {}, "targets": {}}
    print(f"\nBest configuration per rule and projected time for 20 trials x 600 episodes "
          f"(= s/trial-episode x {PROJECT_TRIAL_EPISODES}):")
    for section in ("cpu", "cuda"):
        for rule in rules:
            ok = [r for r in result[section] if r.get("ok") and r["rule"] == rule and r.get("loss_finite", True)]
            if not ok:
                continue
            b = min(ok, key=lambda r: r["s_per_trial_episode"])
            proj = b["s_per_trial_episode"] * PROJECT_TRIAL_EPISODES
            key = f"{section}:{rule}"
            summary["best"][key] = {k: b.get(k, 1) for k in ("mode", "threads", "workers", "T", "s_per_trial_episode")}
            summary["projection_s_20x600"][key] = proj
            print(f"  {section:4s} {rule:5s} best mode={b['mode']} threads={_threads_label(b)} T={b['T']}: "
                  f"{fmt_s(b['s_per_trial_episode'])} s/trial-ep -> {proj:.0f} s = {proj / 3600:.2f} h")

    print("\nTargets (issue), CPU:")
    def verdict(name: str, value: float | None, target: float, where: str) -> None:
        if value is None:
            state = "not measured"
        else:
            state = "met" if value <= target else "not met"
        summary["targets"][name] = {"target_s": target, "measured_s": value, "where": where, "status": state}
        shown = "-" if value is None else f"{value:.3f} s"
        print(f"  {name:44s} <= {target:.2f} s: {shown:>9s} {where:24s} {state}")

    for rule, target in TARGET_BEST.items():
        b = summary["best"].get(f"cpu:{rule}")
        verdict(f"{rule} per trial-episode, best batching", b and b["s_per_trial_episode"], target,
                f"({b['mode']}, threads={_threads_label(b)}, T={b['T']})" if b else "")
    single = [r for r in result["cpu"] if r.get("ok") and r["rule"] == "bio" and r["T"] == 1 and r["threads"] == 1]
    best_single = min(single, key=lambda r: r["s_per_trial_episode"]) if single else None
    verdict("bio single trial, unbatched (T=1, 1 thread)", best_single and best_single["s_per_trial_episode"],
            TARGET_SINGLE_BIO, f"({best_single['mode']})" if best_single else "")
    if args.quick or repeats < 3:
        print("  (quick/low-repeat run: indicative only)")
    summary["elapsed_s"] = time.perf_counter() - t_start
    result["summary"] = summary
    save()
    print(f"\nwrote {out} ({summary['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
