"""Test-wide settings: a headless matplotlib backend, a fixed thread count, and one numeric
mode for every x86-64 CPU with AVX2, so that float results are reproducible bit for bit between
runs and between machines (the golden records, the committed figures)."""
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

# scripts/figures.py's NUMERICS (MKL's reproducible AVX2 path, PyTorch's and oneDNN's AVX2
# kernels), set before torch loads: its kernels are chosen once, at start-up. Without it a
# machine with AVX-512 computes other last bits than one without, and a meta-training run
# amplifies them (the golden records failed on such a machine).
_spec = importlib.util.spec_from_file_location("_figures", Path(__file__).resolve().parents[1] / "scripts" / "figures.py")
_figures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _figures  # its dataclasses look their module up there
_spec.loader.exec_module(_figures)
for _k, _v in _figures.NUMERICS.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


# The tests run on pytest-xdist workers (pyproject's addopts: -n auto --dist loadgroup). The
# notebooks' smoke runs by papermill stay together in one pytest process, one after the other;
# so do the figure check's notebook runs, and the browser tests.
_GROUPS = {"test_notebooks.py": "papermill", "test_figures.py": "figures", "test_browser.py": "browser"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        group = _GROUPS.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
