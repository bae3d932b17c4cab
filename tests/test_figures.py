"""The committed figures/ are current: regenerating every figure from the committed results/
(scripts/figures.py: the ``labkit figures`` calls and the four notebooks in full mode) gives
the same set of files, each equal within a small pixel tolerance.

Run just these: ``.venv/bin/python -m pytest tests/test_figures.py -q`` (4-7 minutes on
2 cores; the fast ones alone: ``-m "not notebooks"``). A failure lists each stale, missing or
orphaned figure with the command that regenerates it; ``.venv/bin/python scripts/figures.py
--write`` regenerates them all.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ["MPLBACKEND"] = "Agg"  # before anything imports matplotlib; kernels inherit it

import numpy as np
import pytest
from PIL import Image
from test_notebooks import venv_kernel  # noqa: F401  (fixture: kernel python3 is this interpreter)

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("labkit_figures_script", ROOT / "scripts" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


figures = _load_script()


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _picture(h: int = 100, w: int = 200) -> np.ndarray:
    """White RGB canvas with a dark diagonal line and a grey box (a stand-in for a plot)."""
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    for x in range(w):
        img[int(x * (h - 1) / (w - 1)), x] = (20, 40, 200)
    img[10:30, 150:190] = 128
    return img


def test_compare_finds_each_kind_of_problem(tmp_path: Path):
    committed, fresh = tmp_path / "committed", tmp_path / "fresh"
    base = _picture()
    _png(committed / "fig3_theta.png", base)
    _png(fresh / "fig3_theta.png", base)
    assert figures.compare(committed, fresh) == []

    # a region changed at full contrast: 30 x 30 = 900 of 20,000 pixels (4.5%)
    changed = base.copy()
    changed[60:90, 20:50] = (200, 30, 30)
    _png(fresh / "fig3_theta.png", changed)
    problems = figures.compare(committed, fresh)
    assert [(p.file, p.kind) for p in problems] == [("fig3_theta.png", "differs")]
    assert "4.500% of pixels (900 of 20000)" in problems[0].detail
    assert problems[0].command.startswith(".venv/bin/labkit figures results/paper/fa_lr") and "--prefix fig3_" in problems[0].command
    assert "fig3_theta.png" in str(problems[0]) and "regenerate with:" in str(problems[0])

    # faint changes (antialiasing) and a few full-contrast pixels are within the tolerance
    faint = base.astype(int)
    faint[::2, ::3] -= 20
    faint[0, :10] = 0  # 10 of 20,000 pixels: 0.05% < 0.1%
    _png(fresh / "fig3_theta.png", np.clip(faint, 0, 255))
    assert figures.compare(committed, fresh) == []
    assert figures.compare(committed, fresh, tol=(10, 0.001))[0].kind == "differs"  # a stricter threshold sees them

    # a different size
    _png(fresh / "fig3_theta.png", _picture(101, 200))
    (problem,) = figures.compare(committed, fresh)
    assert problem.kind == "differs" and "size 200x100 committed, 200x101 regenerated" in problem.detail

    # orphaned: committed, nothing makes it; missing: made, not committed
    _png(fresh / "fig3_theta.png", base)
    _png(committed / "fig3_extra.png", base)
    _png(committed / "zz_unknown.png", base)
    _png(fresh / "02_new_figure.png", base)
    problems = {p.file: p for p in figures.compare(committed, fresh)}
    assert {f: p.kind for f, p in problems.items()} == {
        "fig3_extra.png": "orphaned", "zz_unknown.png": "orphaned", "02_new_figure.png": "missing"}
    assert "git rm figures/fig3_extra.png" in problems["fig3_extra.png"].detail
    assert "papermill 02_discovering_rules.ipynb" in problems["02_new_figure.png"].command
    assert "no group" in problems["zz_unknown.png"].command


def test_every_notebook_and_figure_has_a_group():
    """Each notebook in notebooks/ is in the table, prefixes don't clash, and every committed
    figure's name says which group makes it."""
    notebooks = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert notebooks == {g.notebook for g in figures.GROUPS if g.notebook}
    prefixes = [g.prefix for g in figures.GROUPS]
    assert len(set(prefixes)) == len(prefixes)
    unowned = [p.name for p in (ROOT / "figures").iterdir() if figures.group_of(p.name) is None]
    assert not unowned, f"figures no group in scripts/figures.py makes: {unowned}"


@pytest.mark.notebooks
def test_committed_figures_are_current(venv_kernel: str, tmp_path: Path):  # noqa: F811
    """Regenerate every figure into a temporary folder; the committed figures/ must match it."""
    start = time.perf_counter()
    made = figures.regenerate(tmp_path / "figures", kernel=venv_kernel, executed_dir=tmp_path / "executed")
    seconds = time.perf_counter() - start
    problems = figures.compare(figures.FIGURES, tmp_path / "figures")
    report = "\n".join(map(str, problems))
    assert not problems, (
        f"{len(problems)} committed figure(s) out of date with results/ and the notebooks "
        f"(all of them: .venv/bin/python scripts/figures.py --write):\n{report}")
    print(f"regenerated {len(made)} figures in {seconds:.0f} s; figures/ is current")
