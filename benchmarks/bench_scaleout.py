"""Time a meta-training run in one process and on local Dask workers, both splits.

Each configuration is a real ``labkit.runs.discover`` call (the code ``labkit discover``
runs) on the offline digits at the paper's network, timed end to end, so that the wall
time includes everything a user waits for: starting the cluster, each worker's imports
and data set, the merge. The start-up cost is also timed on its own (a local cluster
of N workers, until each worker has run one trivial task). The configurations:

* ``one process, T threads``: ``--workers 1 --threads T``;
* ``trials split, N workers``: ``--workers N`` (each worker meta-trains a part of the trials);
* ``episode split, N workers``: ``--workers N --split episode`` (each episode's trial chunks
  go out to the workers and come back).

Every configuration's ``history.csv`` is compared with the first one's: the splits must
give the very same numbers. This is recorded as ``identical`` in the JSON.

    .venv/bin/python benchmarks/bench_scaleout.py                       # rule bio, 8 trials x 30 episodes
    .venv/bin/python benchmarks/bench_scaleout.py --trials 4 --episodes 10 --rule fa   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_startup(workers: int) -> float:
    from labkit.workers import connect

    start = time.perf_counter()
    with connect(workers) as client:
        client.run(lambda: None)
        import labkit.meta  # noqa: F401

        client.run(lambda: __import__("labkit.runs"))  # the imports a part needs
        return time.perf_counter() - start


def time_run(cfg: dict, out: Path, split: str = "trials") -> float:
    from labkit.meta import MetaConfig
    from labkit.runs import discover

    start = time.perf_counter()
    discover(MetaConfig(**cfg), out, split=split, progress=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rule", default="bio")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", default="off", choices=("off", "on"),
                    help="compile in every configuration (default off: the split alone is compared)")
    ap.add_argument("--configs", default="one1,oneW,trials,episode",
                    help="which configurations, in order (the first is the reference for 'same numbers' and "
                         "speed-ups): one1 (one process, 1 thread), oneW (one process, W threads), trials, episode")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/scaleout_<host>.json)")
    args = ap.parse_args()

    base = dict(rule=args.rule, trials=args.trials, episodes=args.episodes, seed=0, compile=args.compile == "on",
                checkpoint_every=10_000)
    W = args.workers
    known = {
        "one1": ("one process, 1 thread", dict(threads=1, workers=1), "trials"),
        "oneW": (f"one process, {W} threads", dict(threads=W, workers=1), "trials"),
        "trials": (f"trials split, {W} workers", dict(threads=1, workers=W), "trials"),
        "episode": (f"episode split, {W} workers", dict(threads=1, workers=W), "episode"),
    }
    configs = [known[k] for k in args.configs.split(",")]
    rows = []
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        startup = time_startup(W)
        print(f"local cluster of {W} workers, started and imported: {startup:.1f} s")
        for k, (name, extra, split) in enumerate(configs):
            out = Path(tmp) / f"run{k}"
            seconds = time_run({**base, **extra}, out, split)
            text = (out / "history.csv").read_text()
            reference = text if reference is None else reference
            per = seconds / (args.trials * args.episodes)
            rows.append(dict(name=name, split=split, **extra, seconds=seconds, s_per_trial_episode=per,
                             identical=text == reference))
            print(f"{name:32s} {seconds:7.1f} s  {per:.4f} s per trial-episode  same numbers: {text == reference}")
    one = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_one_thread"] = one / r["seconds"]
    result = dict(
        what="labkit.runs.discover end to end (cluster start, imports, data, meta-training, merge)",
        settings=base, workers=W, startup_seconds=startup, rows=rows,
        machine=dict(host=socket.gethostname(), cpu=_cpu_model(), usable_cores=len(os.sched_getaffinity(0)),
                     platform=platform.platform(), loadavg_after=os.getloadavg()),
        versions={"torch": __import__("torch").__version__, "distributed": __import__("distributed").__version__},
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    path = Path(args.out or f"benchmarks/results/scaleout_{socket.gethostname()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
