"""labkit sweep: a grid of runs on Dask workers that survives a lost worker and resumes."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pandas as pd
import pytest

from labkit import cli
from labkit.sweep import Sweep, SweepError, load_sweep, run_sweep

BASE = dict(rule="bio", trials=2, episodes=30, hidden=(24,), M=3, K=4, Q=2, checkpoint_every=3, threads=1)


def grid_sweep(out) -> Sweep:
    return Sweep(out, base=BASE, grid={"lam": [0.0, 1e-3], "seed": [0, 1]})


def histories(out) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((out / "cells").glob("*/history.csv"))}


def test_a_sweep_is_a_grid_of_named_cells_from_a_toml_file_and_flags(tmp_path):
    (tmp_path / "s.toml").write_text('out = "x"\n[base]\nrule = "bio"\ntrials = 2\n[grid]\nlam = [0.0, 0.001]\n')
    s = load_sweep(tmp_path / "s.toml", grid=["seed=0,1", "hidden=16x8,32"], fixed=["meta-lr=3e-4"], out=tmp_path / "o")
    cells = s.cells()
    assert len(cells) == 8 and s.base["meta_lr"] == 3e-4
    assert {c.folder.name for c in cells} >= {"lam=0.0_seed=0_hidden=16x8", "lam=0.001_seed=1_hidden=32"}
    assert all(c.config.workers == 1 for c in cells)
    with pytest.raises(SweepError, match="unknown setting 'lamda'"):
        load_sweep(None, grid=["lamda=1,2"], out=tmp_path)
    with pytest.raises(SweepError, match="cell lam=-1.*lambda"):
        load_sweep(None, grid=["lam=-1"], out=tmp_path).cells()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean sweep of 4 cells on 2 local workers (what a lost worker must not change)."""
    out = tmp_path_factory.mktemp("clean")
    table = run_sweep(grid_sweep(out), workers=2, progress=False)
    return out, table


def test_a_sweep_writes_a_folder_per_cell_and_a_table_and_skips_finished_cells(clean):
    out, table = clean
    assert list(table["status"]) == ["done"] * 4
    assert set(table.columns) >= {"lam", "seed", "folder", "meta_accuracy", "ci_low", "ci_high", "episodes"}
    assert (table["episodes"] == BASE["episodes"]).all()
    assert pd.read_csv(out / "sweep.csv")["meta_accuracy"].tolist() == pytest.approx(table["meta_accuracy"].tolist())
    before = histories(out)
    again = run_sweep(grid_sweep(out), workers=1, progress=False)
    assert list(again["status"]) == ["skipped (finished)"] * 4
    assert histories(out) == before


def test_a_worker_killed_mid_cell_costs_only_that_cell_which_a_rerun_finishes_with_the_same_numbers(clean, tmp_path):
    import dask
    from distributed import Client, LocalCluster

    out = tmp_path / "killed"
    killed: dict = {}
    # no retries: the killed cell fails in this run, and the re-run must resume it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:

            def kill_when_a_cell_is_half_done():
                deadline = time.time() + 600
                while time.time() < deadline and not killed:
                    for h in (out / "cells").glob("*/history.csv"):
                        lines = h.read_text().splitlines()
                        episode = int(lines[-1].split(",")[1]) if len(lines) > 1 else 0
                        if 9 <= episode < BASE["episodes"] - 5:
                            pids = client.run(os.getpid)
                            busy = {w: ks for w, ks in client.processing().items() if ks}
                            name = h.parent.name
                            worker = next((w for w, ks in busy.items() if any(name in str(k) for k in ks)), None)
                            if worker is None:
                                continue
                            os.kill(pids[worker], signal.SIGKILL)
                            killed.update(cell=name, episode=episode)
                            return
                    time.sleep(0.02)

            watcher = threading.Thread(target=kill_when_a_cell_is_half_done, daemon=True)
            watcher.start()
            first = run_sweep(grid_sweep(out), scheduler=cluster.scheduler_address, progress=False)
            watcher.join(timeout=5)
    assert killed, "the watcher never caught a cell in the middle"
    status = dict(zip(first["folder"].map(lambda f: f.rsplit("/", 1)[-1]), first["status"]))
    # the killed cell failed (and a cell queued on the same worker may have, with no progress lost)
    assert status[killed["cell"]].startswith("failed")
    assert sum(s == "done" for s in status.values()) >= 2
    import torch

    kept = torch.load(out / "cells" / killed["cell"] / "checkpoint.pt", weights_only=False)["episode"]
    assert 9 - BASE["checkpoint_every"] <= kept <= killed["episode"]  # its last checkpoint survives the kill
    second = run_sweep(grid_sweep(out), workers=2, progress=False)
    redo = {n for n, st in status.items() if st.startswith("failed")}
    status2 = dict(zip(second["folder"].map(lambda f: f.rsplit("/", 1)[-1]), second["status"]))
    assert status2 == {n: ("done" if n in redo else "skipped (finished)") for n in status}
    assert histories(out) == histories(clean[0])
    assert second["meta_accuracy"].tolist() == clean[1]["meta_accuracy"].tolist()


def test_labkit_sweep_from_the_command_line_writes_the_table_and_the_figure(tmp_path, capsys):
    code = cli.main(["sweep", "--grid", "seed=0,1", "--set", "rule=fa", "--set", "trials=1", "--set", "episodes=2",
                     "--set", "hidden=16", "--set", "M=3", "--set", "K=3", "--set", "Q=2", "--set", "threads=1",
                     "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "2 cells" in out
    assert (tmp_path / "sweep.csv").exists() and (tmp_path / "sweep.png").stat().st_size > 0
    cell = json.loads(next((tmp_path / "cells").glob("*/config.json")).read_text())
    assert cell["command"].startswith("labkit sweep --grid seed=0,1 --set rule=fa")  # recorded on the worker
    code = cli.main(["sweep", "--grid", "nonsense=1", "--out", str(tmp_path)])
    assert code == 2 and "unknown setting 'nonsense'" in capsys.readouterr().err
