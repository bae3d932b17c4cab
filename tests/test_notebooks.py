"""The tutorial notebooks: every one runs in smoke mode and writes its figures; every
jupytext pair (``NN_name.py`` <-> ``NN_name.ipynb``) is in sync; the playground's widgets
work headless.

Run just these: ``MPLBACKEND=Agg .venv/bin/python -m pytest tests/test_notebooks.py -q``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

os.environ["MPLBACKEND"] = "Agg"  # before anything imports matplotlib; kernels inherit it

import jupytext  # noqa: E402
import nbformat  # noqa: E402
import papermill  # noqa: E402  (slow import: once per session)
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
PATTERN = "[0-9][0-9]_*"
NOTEBOOKS = sorted(NB_DIR.glob(PATTERN + ".ipynb"))
SCRIPTS = sorted(NB_DIR.glob(PATTERN + ".py"))
STEMS = sorted({p.stem for p in NOTEBOOKS} | {p.stem for p in SCRIPTS})
KERNEL = "python3"


def _same_interpreter(argv0: str) -> bool:
    """Does a kernelspec's argv[0] start this interpreter? ("python" is replaced by
    sys.executable by jupyter_client, so it counts.)"""
    if argv0 in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        return True
    try:
        return Path(argv0).resolve() == Path(sys.executable).resolve() or Path(argv0).parent.resolve() == Path(
            sys.executable
        ).parent.resolve()
    except OSError:
        return False


@pytest.fixture(scope="session")
def venv_kernel(tmp_path_factory) -> str:
    """Make kernel ``python3`` start this (the venv's) interpreter.

    If no ``python3`` kernelspec exists, install one into sys.prefix. If the one that wins
    belongs to another interpreter (e.g. a user-level kernelspec), put a kernelspec of this
    interpreter first on JUPYTER_PATH for this session.
    """
    from ipykernel import kernelspec as ipk
    from jupyter_client.kernelspec import KernelSpecManager, find_kernel_specs

    if KERNEL not in find_kernel_specs():
        ipk.install(prefix=sys.prefix, kernel_name=KERNEL)
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    if not _same_interpreter(spec.argv[0]):
        prefix = tmp_path_factory.mktemp("kernel")
        ipk.install(prefix=str(prefix), kernel_name=KERNEL)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(prefix / "share" / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
        )
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert _same_interpreter(spec.argv[0]), f"kernel {KERNEL} starts {spec.argv[0]}, not {sys.executable}"
    return KERNEL


def test_sync_every_notebook_has_its_pair():
    """Every NN_name.py has an NN_name.ipynb and vice versa, and there is at least one."""
    assert STEMS, f"no notebooks matching {PATTERN} in {NB_DIR}"
    missing = [f"{s}.{ext}" for s in STEMS for ext in ("py", "ipynb") if not (NB_DIR / f"{s}.{ext}").is_file()]
    assert not missing, f"notebook pairs incomplete, missing: {missing} (run jupytext --sync)"


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


@pytest.mark.parametrize("stem", STEMS)
def test_sync_pair(stem: str):
    """The .py (reviewed source) and the .ipynb hold the same cells; the .ipynb names the kernel."""
    py, ipynb = NB_DIR / f"{stem}.py", NB_DIR / f"{stem}.ipynb"
    assert py.is_file() and ipynb.is_file(), f"{stem}: needs both {py.name} and {ipynb.name}"
    a, b = _cells(jupytext.read(py)), _cells(jupytext.read(ipynb))
    assert len(a) == len(b), f"{stem}: {len(a)} cells in .py, {len(b)} in .ipynb; run jupytext --sync {py}"
    for i, (ca, cb) in enumerate(zip(a, b)):
        assert ca == cb, f"{stem}: cell {i} differs between .py and .ipynb; run jupytext --sync {py}"
    raw = nbformat.read(ipynb, as_version=4)
    ks = raw.metadata.get("kernelspec", {})
    assert ks.get("name") == KERNEL and ks.get("language") == "python", f"{stem}.ipynb kernelspec: {ks}"
    assert any("parameters" in c.metadata.get("tags", ()) for c in raw.cells), f"{stem}: no 'parameters' cell"


FIGURES = ROOT / "figures"  # the committed figures: only full (non-smoke) runs may write here
# Notebooks that, in smoke mode, send their figures to a temporary folder when FIG_DIR is the
# committed figures folder (the default). The others get FIG_DIR set by the test.
SMOKE_REDIRECTS = {"01_feedback_alignment", "02_discovering_rules", "03_interpreting_rules", "04_playground",
                   "05_plastic_feedback", "06_beyond_the_paper"}


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """{file name: (mtime_ns, sha256)} of every file in ``folder`` (empty if it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir()) if p.is_file()}


def _output_text(executed: Path) -> str:
    nb = nbformat.read(executed, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(notebook: Path, venv_kernel: str, tmp_path: Path):
    """Execute with papermill (SMOKE=True, no results folder) and check the figures written.

    Smoke mode never writes into the committed figures/ folder: the notebooks of
    SMOKE_REDIRECTS run with their default FIG_DIR (the committed folder) and must send their
    figures elsewhere; every notebook must leave figures/ byte-for-byte unchanged.
    """
    parameters = {"SMOKE": True, "RESULTS_DIR": str(tmp_path / "none")}
    if notebook.stem not in SMOKE_REDIRECTS:
        parameters["FIG_DIR"] = str(tmp_path / "figures")
    before = _snapshot(FIGURES)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / notebook.name),
        parameters=parameters,
        kernel_name=venv_kernel,
        cwd=str(NB_DIR),
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    assert _snapshot(FIGURES) == before, f"{notebook.name} in smoke mode changed the committed {FIGURES}"
    saved = [Path(line.split("saved ", 1)[1].strip())
             for line in _output_text(tmp_path / notebook.name).splitlines() if line.startswith("saved ")]
    fig_dirs = {p.parent.resolve() for p in saved}
    try:
        prefix = notebook.stem[:3]  # "01_"
        assert saved, f"{notebook.name} saved no figure"
        assert len(fig_dirs) == 1, f"{notebook.name} saved figures into several folders: {fig_dirs}"
        fig_dir = next(iter(fig_dirs))
        assert fig_dir != FIGURES.resolve()
        if notebook.stem not in SMOKE_REDIRECTS:
            assert fig_dir == (tmp_path / "figures").resolve()
        pngs = sorted(fig_dir.glob(f"{prefix}*.png"))
        assert pngs, f"{notebook.name} wrote no {prefix}*.png into FIG_DIR"
        assert {p.name for p in saved} == {p.name for p in pngs}
        empty = [p.name for p in pngs if p.stat().st_size == 0]
        assert not empty, f"{notebook.name} wrote empty figures: {empty}"
        stray = [p.name for p in fig_dir.iterdir() if not p.name.startswith(prefix)]
        assert not stray, f"{notebook.name} wrote files without its prefix {prefix!r}: {stray}"
    finally:
        for d in fig_dirs:  # the temporary folder a notebook chose for itself
            if d.name.startswith("labkit_smoke_figures_"):
                shutil.rmtree(d, ignore_errors=True)
    print(f"{notebook.name}: {seconds:.1f} s, figures {[p.name for p in saved]}")


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """A RESULTS_DIR with tiny runs of paper/fa_lr, paper/bp_lr, paper/dfa_lr and paper/bio (as
    `labkit discover` writes them, where notebooks 01 and 04 look for them)."""
    from labkit.meta import MetaConfig, MetaTrainer

    root = tmp_path_factory.mktemp("results")
    for name, rule in (("paper/fa_lr", "fa"), ("paper/bp_lr", "bp"), ("paper/dfa_lr", "dfa"), ("paper/bio", "bio")):
        MetaTrainer(MetaConfig(rule=rule, trials=2, episodes=2, K=3, Q=2), out=root / name).run(progress=False)
    return root


# Non-smoke parameters that keep a run short while taking the "read RESULTS_DIR" paths, and
# what the output must then say ({results} is the results folder).
READING_RESULTS = {
    "01_feedback_alignment": (
        {"DATASET": "digits", "N_SAMPLES": 40, "EVERY": 20, "N_EVAL": 50, "TRIALS": 2},
        ["fa_lr  : loaded committed results from {results}/paper", "bp_lr  : loaded committed results from {results}/paper",
         "dfa_lr : loaded committed results from {results}/paper", "bio rule from {results}/paper/bio", "FA + bio rule: final"],
    ),
    "04_playground": (
        {"N_SAMPLES": 50, "TRIALS": 1},
        ["meta-trained trials in {results}/paper/bio", "'label': 'discovered bio'}}"],
    ),
}


@pytest.mark.notebooks
@pytest.mark.parametrize("stem", sorted(READING_RESULTS))
def test_notebook_reads_results_folders(stem: str, venv_kernel: str, tiny_results: Path, tmp_path: Path):
    """With SMOKE=False and results folders present, the notebook loads them instead of running afresh."""
    fig_dir = tmp_path / "figures"
    out = tmp_path / f"{stem}.ipynb"
    papermill.execute_notebook(
        str(NB_DIR / f"{stem}.ipynb"), str(out),
        parameters={"SMOKE": False, "FIG_DIR": str(fig_dir), "RESULTS_DIR": str(tiny_results),
                    **READING_RESULTS[stem][0]},
        kernel_name=venv_kernel, cwd=str(NB_DIR), progress_bar=False,
    )
    text = _output_text(out)
    for expected in READING_RESULTS[stem][1]:
        expected = expected.format(results=tiny_results)
        assert expected in text, f"{stem}: output lacks {expected!r}"
    assert "TINY meta-training afresh" not in text
    assert sorted(fig_dir.glob(f"{stem[:3]}*.png"))


def test_04_widgets_headless():
    """The playground's controls build without a frontend and its callback returns a figure."""
    import numpy as np

    from labkit import widgets

    table = widgets.presets(None)
    assert set(table) == set(widgets.FALLBACK_THETA)
    controls = widgets.build_controls(None, preset="Oja", n_samples=50)
    v = controls.values()
    assert v["feedback"] == "fa" and v["label"] == "Oja, hand-set" and v["theta"][9] == widgets.FALLBACK_THETA["Oja"][9]
    controls.apply(widgets.Preset("wide", "dfa", tuple([0.2] + [0.0] * 9), "test"))  # outside the slider range
    assert controls.thetas[0].value == 0.2 and controls.feedback.value == "dfa"
    box = widgets.playground(controls)
    assert box.children
    fig, curves = widgets.run_and_plot("fa", widgets.theta_vector({0: 0.01, 2: -0.03}), 20, trials=1, every=10)
    assert len(fig.axes) >= 2 and len(curves) == 3
    c = next(iter(curves.values()))
    assert c["accuracy"].shape == (1, 3) and c["alpha"].shape[:2] == (1, 3)
    assert np.isfinite(c["accuracy"]).all()
