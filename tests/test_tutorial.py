"""labkit.tutorial: what the notebooks share (load_or_run, Run, save_figure, online_learning)."""
from __future__ import annotations

import ast
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labkit import tutorial
from labkit.meta import MetaConfig, MetaTrainer

SMALL = dict(trials=1, episodes=2, K=2, Q=1)  # a meta-training run of about a second


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A results folder holding one finished run, ``fa_lr``, as `labkit discover` writes it."""
    root = tmp_path_factory.mktemp("results")
    MetaTrainer(MetaConfig(rule="fa", **SMALL), out=root / "fa_lr").run(progress=False)
    return root


class _NoTraining:
    def __init__(self, *args, **kwargs):
        raise AssertionError("load_or_run should have read the folder, not meta-trained")


def test_load_or_run_reads_an_existing_folder_without_recomputing(results_dir, monkeypatch, capsys):
    monkeypatch.setattr(tutorial, "MetaTrainer", _NoTraining)
    run = tutorial.load_or_run("fa_lr", results_dir, smoke=False)
    assert run.source == "results" and run.folder == results_dir / "fa_lr" and run.name == "fa_lr"
    assert run.size == "1 trials x 2 episodes"
    assert run.config["rule"] == "fa" and run.theta["terms"] == [0]
    assert np.isfinite(run.mean_theta(0))
    assert f"fa_lr  : loaded committed results from {results_dir / 'fa_lr'} (1 trials x 2 episodes, digits)" \
        in capsys.readouterr().out


@pytest.mark.parametrize("smoke, name, why", [
    (True, "fa_lr", "SMOKE mode"),  # the folder exists, but smoke mode never reads it
    (False, "missing", "no results at"),
])
def test_load_or_run_runs_tiny_when_smoke_or_missing(results_dir, smoke, name, why, capsys):
    run = tutorial.load_or_run(name, results_dir, smoke, tiny=SMALL, rule="bio", episodes=1)
    assert run.source == "tiny" and run.folder != results_dir / name
    assert run.size == "1 trials x 1 episodes"  # cfg overrides tiny
    assert run.config["rule"] == "bio" and run.theta["terms"] == [0, 2, 9]
    out = capsys.readouterr().out
    assert f"{why}" in out and "-> ran a TINY meta-training afresh (1 trials x 1 episodes, K=2, Q=1)" in out
    if name == "missing":
        assert not (results_dir / name).exists()  # the tiny run goes to a temporary folder


def test_load_or_run_does_not_read_an_unfinished_run(results_dir, tmp_path, capsys):
    (tmp_path / "bio").mkdir()
    (tmp_path / "bio" / "history.csv").write_text((results_dir / "fa_lr" / "history.csv").read_text())
    run = tutorial.load_or_run("bio", tmp_path, smoke=False, tiny=SMALL, rule="bio")
    assert run.source == "tiny"
    assert "unfinished run at" in capsys.readouterr().out


def test_save_figure_writes_a_png_and_makes_the_folder(tmp_path, capsys):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = tutorial.save_figure(fig, tmp_path / "figures", "00_test.png")
    plt.close(fig)
    assert path == tmp_path / "figures" / "00_test.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved {path}" in capsys.readouterr().out


def test_online_learning_is_shared_with_the_playground_and_seeded():
    from labkit import widgets

    assert widgets.online_learning is tutorial.online_learning
    a = tutorial.online_learning("fa", {0: 0.01}, 20, trials=1, every=10, n_eval=50)
    tutorial._online_learning_cached.cache_clear()
    b = tutorial.online_learning("fa", np.eye(10)[0] * 0.01, 20, trials=1, every=10, n_eval=50)
    assert a["n_samples"] == 20 and a["accuracy"].shape == (1, 3)
    np.testing.assert_array_equal(a["accuracy"], b["accuracy"])
    assert a["n_classes"] == 10  # the digits stream: chance accuracy 10%
    with pytest.raises(ValueError, match="unknown feedback pathway 'nope'; choose one of"):
        tutorial.online_learning("nope", {0: 0.01}, 20, trials=1)


def test_online_learning_accepts_every_registered_pathway_and_only_those():
    """online_learning validates with the registry of labkit.pathways, not a list of its own."""
    from labkit import pathways

    for name in pathways.names():
        c = tutorial.online_learning(name, {0: 0.01}, 10, trials=1, every=10, n_eval=30)
        assert c["accuracy"].shape == (1, 2) and np.isfinite(c["accuracy"]).all(), name
    with pytest.raises(ValueError) as err:
        tutorial.online_learning("sign-symmetry", {0: 0.01}, 10, trials=1)
    assert all(name in str(err.value) for name in pathways.names())


def test_nothing_below_imports_tutorial():
    """tutorial sits on top of the library: only the notebook-facing widgets may import it."""
    pkg = Path(tutorial.__file__).parent
    offenders = []
    for path in sorted(pkg.glob("*.py")):
        if path.stem in ("tutorial", "widgets"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "tutorial" or n.endswith(".tutorial") for n in names):
                offenders.append(path.name)
    assert not offenders, f"these modules import labkit.tutorial: {offenders}"
