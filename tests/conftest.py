"""Test-wide settings: a headless matplotlib backend, and a fixed thread count so that
float results are reproducible between runs on the same machine."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

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
