"""Test-wide settings: a headless matplotlib backend, and a fixed thread count so that
float results are reproducible between runs on the same machine."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
