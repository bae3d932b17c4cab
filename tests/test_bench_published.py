"""benchmarks/bench_published.py runs labkit's side and writes its JSON; without the published
code its rows are reported as skipped, with the reason. (No timing is asserted: speed claims come
from running the benchmark. The published implementation is an optional external dependency,
never part of this repository and never stubbed here.)"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--K", "5", "--trials", "2", "--episodes", "1", "--warmup", "0", "--modes", "adjoint", "--no-units"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_published", ROOT / "benchmarks" / "bench_published.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_labkit_side_runs_and_published_rows_are_skipped_without_a_path(tmp_path, monkeypatch, capsys):
    bench = load_bench()
    monkeypatch.delenv(bench.PUBLISHED_ENV, raising=False)
    out = tmp_path / "r.json"
    assert bench.main(TINY + ["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    pub = res["published"]
    assert pub["ok"] is False and pub["skipped"] is True
    assert "--published" in pub["reason"] and bench.PUBLISHED_ENV in pub["reason"]
    [row] = res["labkit"]
    assert row["ok"] and row["kind"] == "trainer" and row["mode"] == "adjoint"
    assert row["terms"] == [0, 2, 9] and row["feedback"] == "fa" and row["sizes"] == [784, 170, 130, 100, 70, 47]
    assert row["s_per_trial_episode"] > 0 and row["cpu_s_per_trial_episode"] > 0 and row["loss_finite"]
    assert row["torch_threads"] == 1
    assert res["target"]["status"].startswith("not measured")
    for key in ("cpu_model", "usable_cores", "torch", "loadavg_at_start", "loadavg_at_end"):
        assert key in res["machine"]
    assert res["date"] and res["settings"]["K"] == 5 and res["settings"]["paper_configuration"] is False
    assert "SKIPPED" in capsys.readouterr().out


def test_a_folder_without_the_published_modules_is_refused_with_the_reason(tmp_path):
    bench = load_bench()
    assert "not a folder" in bench.check_published(tmp_path / "absent")
    assert "main.py" in bench.check_published(tmp_path)


def test_the_published_code_runs_when_a_checkout_is_given(tmp_path):
    path = os.environ.get("LABKIT_PUBLISHED")
    if not path:
        pytest.skip("optional external dependency: set $LABKIT_PUBLISHED to a checkout of "
                    "github.com/NeuralDynamicsAndComputing/MetaLearning-Plasticity (not part of this repository)")
    bench = load_bench()
    why = bench.check_published(path)
    if why:
        pytest.skip(f"optional external dependency: $LABKIT_PUBLISHED is not usable: {why}")
    out = tmp_path / "r.json"
    assert bench.main(TINY + ["--published", path, "--out", str(out)]) == 0
    pub = json.loads(out.read_text())["published"]
    assert pub["ok"], pub.get("error")
    assert pub["full_inner_loop"] and pub["adapt_steps_per_episode"] == [25]  # M*K = 5*5 online steps
    assert pub["vec"] == ["1", "2"] and pub["fbk"] == "fix" and pub["feedback_random"]
    assert pub["theta_names"][:3] == ["a_fwd", "b_fwd", "c_fwd"]
    assert pub["theta_end"][:3] != pub["theta_start"][:3]  # the meta-step moved Theta by autograd and Adam
    assert pub["s_per_trial_episode"] > 0
