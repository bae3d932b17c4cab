"""The speed benchmark runs and reports what its README says (no timing is asserted here:
speed claims come from running benchmarks/bench_meta.py, never from a timed test)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_meta", ROOT / "benchmarks" / "bench_meta.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("mode,workers", [("adjoint", 1), ("reverse", 1), ("forward", 1), ("adjoint", 2)],
                         ids=["adjoint", "reverse", "forward", "adjoint-2-workers"])
def test_one_benchmark_configuration_runs_and_reports_time_and_memory(mode, workers, monkeypatch):
    import torch

    bench = load_bench()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # run_single sets these; monkeypatch restores them
    threads = torch.get_num_threads()
    cfg = dict(sizes=[20, 10, 5], M=3, K=2, Q=2, feedback="fa", dtype="float32", warmup=1, repeats=1,
               seed=0, mode=mode, device="cpu", rule="bio", T=2, threads=1, workers=workers)
    try:
        out = bench.run_single(cfg)
    finally:
        torch.set_num_threads(threads)
    assert out["ok"] and out["loss_finite"]
    assert out["s_per_trial_episode"] > 0 and out["s_first_unit"] > 0
    assert out["peak_rss_MB"] > 0
    assert out["workers"] == workers and (workers == 1) == (out["peak_rss_worker_MB"] is None)


def test_the_benchmark_refuses_an_unknown_mode():
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--modes", "sideways", "--no-K-sweep"])
