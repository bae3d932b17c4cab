"""Runs on Dask workers give a one-process run's numbers; bad input fails fast and clearly."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from labkit import cli
from labkit.meta import CheckpointError, MetaConfig, MetaTrainer, merge_states, slice_state
from labkit.results import FolderBusyError, FolderLock, merge_histories
from labkit.runs import discover, split_trials
from labkit.workers import ClusterError, connect


def tiny(**kw) -> MetaConfig:
    base = dict(rule="bio", episodes=4, trials=5, hidden=(16,), M=3, K=3, Q=2, checkpoint_every=2, threads=1)
    return MetaConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker local Dask cluster; tests reach it by its address, as --scheduler does."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def files(folder) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("history.csv", "theta.json")}


def checkpoint(folder) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=False)


def test_trials_split_into_consecutive_parts_that_differ_by_at_most_one():
    assert split_trials(5, 2) == [[0, 1, 2], [3, 4]]
    assert split_trials(3, 8) == [[0], [1], [2]]
    assert sum(map(len, split_trials(20, 3))) == 20
    # a compiled run splits between chunks only (each part batches trials as one process does)
    assert split_trials(20, 2, chunk=4) == [list(range(12)), list(range(12, 20))]
    assert split_trials(4, 2, chunk=4) == [[0, 1, 2, 3]]
    assert split_trials(9, 2, chunk=4) == [list(range(8)), [8]]


def test_a_run_split_over_workers_equals_the_one_process_run_bit_for_bit(tmp_path, cluster):
    serial = tmp_path / "serial"
    discover(tiny(), serial, progress=False)
    for name, kw in {"trials": dict(split="trials"), "episode": dict(split="episode")}.items():
        out = tmp_path / name
        discover(tiny(workers=2), out, scheduler=cluster.scheduler_address, progress=False, **kw)
        assert files(out) == files(serial), name
        a, b = checkpoint(serial), checkpoint(out)
        assert a["episode"] == b["episode"] and torch.equal(a["theta"], b["theta"]), name
        assert all(torch.equal(a["adam"][k], b["adam"][k]) for k in a["adam"]), name
        assert not (out / "parts").exists()
    assert json.loads((tmp_path / "trials" / "config.json").read_text())["split"] == "trials"


def test_three_parts_on_two_workers_and_a_resumed_one_process_run_give_the_same_numbers(tmp_path, cluster):
    serial = tmp_path / "serial"
    discover(tiny(episodes=6), serial, progress=False)
    # a one-process run stopped after 3 episodes, resumed on the workers in three parts
    cut = tmp_path / "cut"
    MetaTrainer(tiny(episodes=6, checkpoint_every=1), out=cut).run(progress=False, stop_after=3)
    from labkit import runs

    original = runs.split_trials
    try:
        runs.split_trials = lambda trials, parts, chunk=None: original(trials, 3, chunk)
        discover(tiny(episodes=6, checkpoint_every=1, workers=2), cut, resume=True,
                 scheduler=cluster.scheduler_address, progress=False)
    finally:
        runs.split_trials = original
    assert files(cut) == files(serial)
    # and the merged checkpoint resumes in one process like the serial run's
    MetaTrainer(tiny(episodes=8), out=serial, resume=True).run(progress=False)
    MetaTrainer(tiny(episodes=8, checkpoint_every=1), out=cut, resume=True).run(progress=False)
    assert files(cut) == files(serial)


def test_workers_start_a_local_dask_cluster_from_the_command_line(tmp_path, capsys):
    argv = ["discover", "--rule", "bio", "--hidden", "16", "--M", "3", "--K", "3", "--Q", "2", "--trials", "3",
            "--episodes", "2", "--threads", "1", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*argv, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert "on 2 local Dask workers (split: trials)" in out
    assert files(tmp_path / "two") == files(tmp_path / "one")
    # the command line is recorded, also by the worker processes that ran the parts
    command = "labkit " + " ".join([*argv, "--workers", "2", "--out", str(tmp_path / "two")])
    assert json.loads((tmp_path / "two" / "config.json").read_text())["command"] == command


def test_checkpoint_states_cut_by_trial_and_merged_back_are_unchanged(tmp_path):
    MetaTrainer(tiny(), out=tmp_path).run(progress=False)
    s = checkpoint(tmp_path)
    m = merge_states([slice_state(s, [3, 4]), slice_state(s, [0, 1, 2])])
    assert m["trials"] == [0, 1, 2, 3, 4] and m["episode"] == s["episode"]
    assert torch.equal(m["theta"], s["theta"]) and m["guards"]["guarded_steps"] == s["guards"]["guarded_steps"]
    for k, v in s["guards"].items():
        if torch.is_tensor(v):
            assert torch.equal(m["guards"][k], v), k


def test_merged_histories_are_sorted_by_episode_then_trial(tmp_path):
    head = "trial,episode,x\n"
    (tmp_path / "a.csv").write_text(head + "2,1,c\n2,2,f\n")
    (tmp_path / "b.csv").write_text(head + "0,1,a\n1,1,b\n0,2,d\n1,2,e\n")
    assert merge_histories([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "m.csv") == 6
    assert (tmp_path / "m.csv").read_text() == head + "0,1,a\n1,1,b\n2,1,c\n0,2,d\n1,2,e\n2,2,f\n"


# ------------------------------------------------------------------------------ bad input
def test_an_unreachable_scheduler_fails_fast_with_a_clear_error(tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        with connect(scheduler="tcp://127.0.0.1:9", timeout=3):
            pass
    assert time.perf_counter() - start < 30
    code = cli.main(["discover", "--hidden", "16", "--episodes", "1", "--trials", "1", "--quiet",
                     "--scheduler", "no-port-here", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "has no port" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "history.csv").exists()


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint.pt to continue from; run without --resume"):
        MetaTrainer(tiny(), out=tmp_path / "empty", resume=True)


def test_an_unwritable_results_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    code = cli.main(["discover", "--hidden", "16", "--episodes", "1", "--trials", "1", "--quiet",
                     "--out", str(tmp_path / "a-file" / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write into results folder" in err and "--out" in err


def test_a_folder_in_use_by_a_live_run_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    import socket

    folder = tmp_path / "run"
    folder.mkdir()
    # a live process on this host (our parent) holds the folder
    (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "token": "x",
                                              "since": "earlier"}))
    with pytest.raises(FolderBusyError, match="in use by another run"):
        MetaTrainer(tiny(), out=folder)
    code = cli.main(["discover", "--hidden", "16", "--episodes", "1", "--trials", "1", "--quiet", "--out", str(folder)])
    assert code == 2 and "in use by another run" in capsys.readouterr().err
    # a dead one's lock is stale
    (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 12345, "token": "x"}))
    MetaTrainer(tiny(episodes=1), out=folder).run(progress=False)
    assert not (folder / ".lock").exists()
    with FolderLock(folder, token="t1"):
        assert FolderLock(folder, token="t1").acquire().held  # the same run's task may take it over


def test_an_interrupted_split_run_keeps_every_part_and_resumes_to_the_one_process_numbers(tmp_path, cluster,
                                                                                         monkeypatch):
    from labkit import runs

    cfg = dict(episodes=120, checkpoint_every=50, compile=False)
    serial = tmp_path / "serial"
    discover(tiny(**cfg), serial, progress=False)
    out = tmp_path / "cut"
    polls = {"n": 0}
    real_sleep = time.sleep

    def ctrl_c_once_the_parts_are_under_way(seconds):
        real_sleep(seconds)
        if runs._last_episode(out / "parts" / "trials_0-2") >= 5:  # noqa: SLF001 - the test's clock
            polls["n"] += 1
            raise KeyboardInterrupt

    monkeypatch.setattr(runs.time, "sleep", ctrl_c_once_the_parts_are_under_way)
    with pytest.raises(KeyboardInterrupt):
        discover(tiny(workers=2, **cfg), out, scheduler=cluster.scheduler_address, progress=False)
    monkeypatch.setattr(runs.time, "sleep", real_sleep)
    assert polls["n"] == 1
    parts = sorted((out / "parts").glob("trials_*"))
    stopped = [torch.load(p / "checkpoint.pt", weights_only=False)["episode"] for p in parts]
    assert len(parts) == 2 and all(0 < e < 120 for e in stopped)  # each part saved where it stopped
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) - 1 == 3 * stopped[0] + 2 * stopped[1]  # every completed episode merged
    discover(tiny(workers=2, **cfg), out, resume=True, scheduler=cluster.scheduler_address, progress=False)
    assert files(out) == files(serial)
