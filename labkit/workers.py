"""Where the computation runs: a Dask cluster of worker processes, on this machine or many.

``labkit discover --workers N`` starts a local Dask cluster (:func:`local_cluster`): N worker
processes with one thread each, since a plasticity step is many small operations that scale
poorly over threads inside one process but well over processes. ``--scheduler ADDRESS`` (or
``$LABKIT_SCHEDULER``) joins a cluster someone started, on one machine or many
(:func:`connect`); docs/scale-out.md tells how to start one by hand or on SLURM.

Only the connection lives here; what runs on the workers is in :mod:`labkit.runs` (whole
meta-training runs over parts of the trials) and :mod:`labkit.meta` (one episode's trial
chunks).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["ClusterError", "SCHEDULER_ENV", "scheduler_address", "connect", "worker_count", "set_worker_threads"]

SCHEDULER_ENV = "LABKIT_SCHEDULER"


class ClusterError(RuntimeError):
    """The Dask cluster cannot be reached or started."""


def scheduler_address(flag: str | None) -> str | None:
    """The scheduler to use: ``--scheduler`` if given, else ``$LABKIT_SCHEDULER``, else None."""
    addr = flag if flag else os.environ.get(SCHEDULER_ENV, "").strip()
    return addr or None


def set_worker_threads(threads: int | None = None) -> int:
    """Set torch's threads in this (worker) process; default 1 (one process per core)."""
    import torch

    n = int(threads or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def connect(workers: int = 1, scheduler: str | None = None, timeout: float = 10.0) -> Iterator["object"]:
    """A ``dask.distributed.Client``: to ``scheduler`` when given (a running cluster, e.g.
    ``tcp://10.0.0.5:8786``), else to a new local cluster of ``workers`` single-threaded
    worker processes, closed on exit.

    Raises :class:`ClusterError` (fast: ``timeout`` seconds) when the scheduler cannot be
    reached or the local cluster cannot start; the message says what to check.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency of labkit
        raise ClusterError("Dask distributed is not installed: pip install 'distributed'") from None
    import dask

    if scheduler is not None:
        if "://" not in scheduler and ":" not in scheduler:
            raise ClusterError(
                f"scheduler address {scheduler!r} has no port: give it as tcp://HOST:PORT (the address "
                "`dask scheduler` prints), or leave --scheduler and $LABKIT_SCHEDULER unset to run locally"
            )
        try:
            client = Client(scheduler, timeout=f"{timeout}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s ({type(exc).__name__}: "
                f"{exc}). Check that `dask scheduler` runs there and the port is open, or unset "
                f"--scheduler/${SCHEDULER_ENV} to run on this machine."
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ClusterError(f"workers must be >= 1, got {workers}")
    try:
        # no dashboard (it would need a free port and bokeh); quiet workers; one thread each
        with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error"}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=40)
    except Exception as exc:
        raise ClusterError(
            f"cannot start a local Dask cluster of {workers} workers ({type(exc).__name__}: {exc}). In a Python "
            "script, keep its top-level code under `if __name__ == \"__main__\":` (the workers import it); "
            "or run with --workers 1"
        ) from None
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def worker_count(client) -> int:
    """How many workers the cluster has now (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))
