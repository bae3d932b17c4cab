"""The files of one run folder: ``history.csv``, ``config.json``, ``theta.json``.

Plots and notebooks read only these files, so figures can be regenerated without
retraining. Layout of a run folder::

    history.csv   one row per (trial, episode), columns from history_columns(L)
    config.json   every setting, seed, versions (written by the caller)
    theta.json    final theta per trial, mean and bootstrap CI over non-diverged trials
                  (and, for a run with plastic feedback, the same for phi under "phi")

The numbers reported about a run are computed here, once: :func:`final_accuracies` /
:func:`final_accuracy` (the "final meta-accuracy" of the README, the run summary, the
notebooks and ``scripts/summarize.py``) and :func:`theta_matrix` (the final theta of every
trial as a ``(T, N_TERMS)`` array), :func:`phi_matrix` (the final phi of a run with plastic
feedback as a ``(T, N_FEEDBACK_TERMS)`` array, None for fixed feedback).

Nothing here imports torch; tensors are accepted wherever they convert with ``float``
or have ``.detach()``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .feedback_terms import FEEDBACK_TERM_NAMES, N_FEEDBACK_TERMS
from .stats import bootstrap_ci
from .terms import N_TERMS, theta_columns

__all__ = [
    "N_TERMS",
    "HISTORY_FILE",
    "CONFIG_FILE",
    "THETA_FILE",
    "history_columns",
    "phi_columns",
    "HistoryWriter",
    "read_history",
    "history_n_layers",
    "pivot_trials",
    "write_json_atomic",
    "write_config",
    "read_config",
    "write_theta",
    "read_theta",
    "read_phi",
    "FINAL_EPISODES",
    "final_values",
    "final_accuracies",
    "final_accuracy",
    "theta_matrix",
    "term_survival",
    "phi_matrix",
    "run_table",
    "FolderBusyError",
    "FolderLock",
    "check_writable",
    "merge_histories",
]

# N_TERMS is labkit.terms.N_TERMS, re-exported here (plots and older code import it from here).
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.json"
THETA_FILE = "theta.json"
_INT_COLUMNS = ("trial", "episode", "diverged")
# Floats read back exactly: pandas >= 3 does so by default (and deprecates the option).
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


# --------------------------------------------------------------------------- history


def phi_columns() -> list[str]:
    """``phi_0 .. phi_3``: the history columns of the feedback terms' coefficients
    (:mod:`labkit.feedback_terms`), written by runs with plastic feedback only."""
    return [f"phi_{s}" for s in range(N_FEEDBACK_TERMS)]


def history_columns(n_layers: int, plastic_feedback: bool = False) -> list[str]:
    """Columns of ``history.csv``, in order, for a net with ``n_layers`` weight layers.

    ``trial, episode, meta_loss, meta_accuracy, theta_0..theta_9, alpha_1..alpha_{L-1},
    weight_angle_1..weight_angle_L, ortho_1..ortho_L, guarded, diverged``; with
    ``plastic_feedback``, ``phi_0..phi_3`` follow ``theta_9`` (a fixed-feedback run has none).
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    L = n_layers
    return (
        ["trial", "episode", "meta_loss", "meta_accuracy"]
        + theta_columns()
        + (phi_columns() if plastic_feedback else [])
        + [f"alpha_{l}" for l in range(1, L)]
        + [f"weight_angle_{l}" for l in range(1, L + 1)]
        + [f"ortho_{l}" for l in range(1, L + 1)]
        + ["guarded", "diverged"]
    )


def _history_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it names a ``.csv`` file, else ``path/history.csv``."""
    p = Path(path)
    return p if p.suffix == ".csv" else p / HISTORY_FILE


def _cell(column: str, value: Any) -> str:
    """One CSV cell: blank for None/NaN, integers for the integer columns."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if hasattr(value, "item"):  # numpy scalar, 0-d array or 0-d tensor
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    f = float(value)
    if math.isnan(f):
        return ""
    if column in _INT_COLUMNS:
        return str(int(f))
    return repr(f)  # shortest string that reads back to the same float


class HistoryWriter:
    """Appends rows to ``history.csv``; the header is written once.

    Each :meth:`append` opens the file, writes and flushes, so a run killed at any
    point keeps every row written so far.

    Args:
        path: the run folder (the file is ``path/history.csv``) or a ``.csv`` path.
        n_layers: number of weight layers L (sets the columns).
        truncate_after_episode: for resuming from a checkpoint taken after episode N:
            keep only existing rows with ``episode <= N`` (rows written after the
            checkpoint would otherwise appear twice), then append. ``0`` starts an
            empty history; ``None`` keeps every existing row.
        plastic_feedback: add the ``phi_s`` columns (a run with plastic feedback).

    Raises:
        ValueError: an existing file has a different header (e.g. another L).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_layers: int,
        truncate_after_episode: int | None = None,
        plastic_feedback: bool = False,
    ) -> None:
        self.path = _history_path(path)
        self.columns = history_columns(n_layers, plastic_feedback)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._prepare_existing(truncate_after_episode)
        else:
            self._write_rows([])

    def _prepare_existing(self, truncate_after_episode: int | None) -> None:
        with open(self.path, newline="") as f:
            text = f.read()
        complete = text[: text.rfind("\n") + 1]  # drops a row cut short by a kill
        lines = list(csv.reader(complete.splitlines(keepends=True)))
        if not lines or lines[0] != self.columns:
            found = lines[0] if lines else []
            raise ValueError(
                f"{self.path}: header does not match a {len(self.columns)}-column history "
                f"for this network (found {len(found)} columns: {found[:6]}...)"
            )
        rows = [r for r in lines[1:] if len(r) == len(self.columns)]
        if truncate_after_episode is not None:
            ep = self.columns.index("episode")
            rows = [r for r in rows if r[ep] and float(r[ep]) <= truncate_after_episode]
        if truncate_after_episode is not None or len(rows) != len(lines) - 1 or complete != text:
            self._write_rows(rows)

    def _write_rows(self, rows: list[list[str]]) -> None:
        """Rewrite the whole file (header + rows) atomically."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(self.columns)
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, rows: Iterable[dict]) -> None:
        """Append rows (dicts keyed by column name); missing keys are left blank.

        Raises:
            KeyError: a row has a key that is not a column (catches typos early).
        """
        known = set(self.columns)
        lines = []
        for row in rows:
            unknown = set(row) - known
            if unknown:
                raise KeyError(f"{self.path}: unknown history columns {sorted(unknown)}")
            lines.append([_cell(c, row.get(c)) for c in self.columns])
        if not lines:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(lines)
            f.flush()


def read_history(folder_or_csv: str | os.PathLike) -> pd.DataFrame:
    """Read ``history.csv`` (give the run folder or the file itself).

    Blank cells read as NaN, ``guarded`` as a string (``''`` when nothing happened),
    ``trial``, ``episode`` and ``diverged`` as integers. A row cut short by a kill
    mid-write is dropped.

    Raises:
        FileNotFoundError: no such file (the message names it).
        ValueError: the file cannot be parsed or lacks the trial/episode columns.
    """
    path = _history_path(folder_or_csv)
    if not path.is_file():
        raise FileNotFoundError(f"no history file at {path}")
    try:
        text = path.read_text()
        text = text[: text.rfind("\n") + 1]  # drops a row cut short by a kill
        df = pd.read_csv(io.StringIO(text), dtype={"guarded": str}, **_EXACT_FLOATS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse history file {path}: {e}") from e
    missing = [c for c in ("trial", "episode") if c not in df.columns]
    if missing:
        raise ValueError(f"history file {path} lacks columns {missing}; found {list(df.columns)}")
    df = df.dropna(subset=["trial", "episode"])
    if "guarded" in df.columns:
        df["guarded"] = df["guarded"].fillna("").astype(str)
    for c in _INT_COLUMNS:
        if c in df.columns:
            df[c] = df[c].fillna(0).astype(int)
    return df.reset_index(drop=True)


def history_n_layers(df: pd.DataFrame) -> int:
    """Number of weight layers L of a history (counted from its ``ortho_l`` columns)."""
    return sum(1 for c in df.columns if c.startswith("ortho_"))


def pivot_trials(df: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One column of a history as a (trials, episodes) array.

    Returns ``(episodes, values, trials)``: the sorted episodes present in any trial,
    ``values[i, j]`` for trial ``trials[i]`` at ``episodes[j]``, NaN where a trial has
    no row (e.g. after it diverged), and NaN for non-finite values and for the row on
    which a trial was stopped (``diverged == 1``). A (trial, episode) written twice
    keeps its last row.
    """
    if column not in df.columns:
        raise KeyError(f"history has no column {column!r}")
    d = df.drop_duplicates(["trial", "episode"], keep="last")
    vals = pd.to_numeric(d[column], errors="coerce").astype(float)
    if "diverged" in d.columns:
        vals = vals.where(d["diverged"] == 0)
    wide = (
        pd.DataFrame({"trial": d["trial"], "episode": d["episode"], "v": vals})
        .pivot(index="trial", columns="episode", values="v")
        .sort_index()
        .sort_index(axis=1)
    )
    values = np.array(wide.to_numpy(dtype=float))  # writable copy (pandas copy-on-write)
    values[~np.isfinite(values)] = np.nan
    return wide.columns.to_numpy(), values, wide.index.to_numpy()


# --------------------------------------------------------------------------- merging


def merge_histories(sources: Iterable[str | os.PathLike], dest: str | os.PathLike) -> int:
    """Write ``dest`` (a folder or ``.csv``) with the rows of several ``history.csv`` files of
    the same network, in the order one process writes them: by episode, then by trial.

    The rows are copied as text (no float is re-read), so merging the histories of runs over
    disjoint trials gives the very file a single run over all of them writes. Returns the row
    count. Raises ValueError when the headers differ.
    """
    header: list[str] | None = None
    rows: list[list[str]] = []
    for src in sources:
        path = _history_path(src)
        if not path.exists():
            continue
        with open(path, newline="") as f:
            text = f.read()
        lines = list(csv.reader(text[: text.rfind("\n") + 1].splitlines(keepends=True)))
        if not lines:
            continue
        if header is None:
            header = lines[0]
        elif lines[0] != header:
            raise ValueError(f"{path}: its columns differ from the other histories being merged")
        rows.extend(r for r in lines[1:] if len(r) == len(header))
    if header is None:
        return 0
    t, e = header.index("trial"), header.index("episode")
    rows.sort(key=lambda r: (int(r[e]), int(r[t])))
    out = _history_path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.merge.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return len(rows)


# --------------------------------------------------------------------------- the folder


class FolderBusyError(RuntimeError):
    """Another live run is writing into the same results folder."""


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) and check that files can be written in it.

    Raises PermissionError/OSError with a message that names the folder and what to do.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"cannot write into results folder {path} ({exc.strerror or exc}); "
            "choose a folder you can write to with --out"
        ) from None
    return path


class FolderLock:
    """An exclusive claim on a results folder: ``folder/.lock`` holds the host, process id,
    run token and start time of the run writing there.

    A second run into the same folder is refused while the first lives. A lock is taken over
    when its process is gone (same host), when it is this process's own, or when it carries
    the caller's ``token`` (the parts of one distributed run, or a sweep cell re-scheduled on
    another worker after its first worker died: the scheduler runs a task once at a time).
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, token: str | None = None):
        self.path = Path(folder) / self.NAME
        self.token = token
        self.held = False

    def _mine(self) -> dict:
        import socket
        import time as _time

        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "since": _time.strftime("%Y-%m-%d %H:%M:%S")}

    def _stale(self, other: dict) -> bool:
        import socket

        if self.token is not None and other.get("token") == self.token:
            return True
        if other.get("host") != socket.gethostname():
            return False
        pid = int(other.get("pid", -1))
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self) -> "FolderLock":
        me = json.dumps(self._mine())
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    other = {}
                if other and not self._stale(other):
                    raise FolderBusyError(
                        f"{self.path.parent} is in use by another run (process {other.get('pid')} on "
                        f"{other.get('host')}, since {other.get('since')}); wait for it to finish or "
                        f"choose another --out folder. If that run is dead, delete {self.path}."
                    ) from None
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise FolderBusyError(f"could not take the lock {self.path}; another run keeps taking it")

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------- json


def _jsonable(obj: Any) -> Any:
    """Plain-JSON version of ``obj``: NaN/inf -> None, arrays/tensors -> lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "detach"):  # torch tensor, without importing torch
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2) so that readers see the old or the new file.

    The text goes to a temporary file in the same folder, which then replaces
    ``path`` (``os.replace``). NaN and infinities become ``null``; numpy arrays,
    numpy scalars, tensors and paths are converted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"cannot parse {what} file {path}: {e}") from e


def write_config(folder: str | os.PathLike, config: dict) -> Path:
    """Write ``folder/config.json`` atomically; returns its path."""
    path = Path(folder) / CONFIG_FILE
    write_json_atomic(path, config)
    return path


def read_config(folder: str | os.PathLike) -> dict:
    """Read ``folder/config.json``."""
    return _read_json(Path(folder) / CONFIG_FILE, "config")


# ---------------------------------------------------------------------------- theta


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def write_theta(
    folder: str | os.PathLike,
    theta: Any,
    active_terms: Iterable[int],
    diverged: Any,
    level: float = 0.98,
    n_resamples: int = 500,
    seed: int = 0,
    phi: Any = None,
    feedback_terms: Iterable[int] | None = None,
) -> dict:
    """Write ``folder/theta.json``: final theta per trial, mean and bootstrap CI.

    Args:
        theta: ``(T, 10)`` final coefficients (a ``(10,)`` vector counts as T = 1).
        active_terms: the terms r of the rule; only these are reported.
        diverged: ``(T,)`` flags; diverged trials are listed but left out of the
            mean and CI (so are trials whose theta is not finite).
        level, n_resamples, seed: of the percentile bootstrap (see stats.bootstrap_ci).
        phi, feedback_terms: a run with plastic feedback: ``(T, N_FEEDBACK_TERMS)`` final
            feedback coefficients and the active feedback terms s. Both or neither.

    Returns the dict written: ``terms``, ``per_trial`` (rows aligned with ``terms``),
    ``diverged``, ``mean``/``ci_low``/``ci_high`` (keyed ``theta_r``), ``level``,
    ``n_resamples``, ``n_trials_used``. Non-finite numbers are written as null (the
    returned dict keeps them as NaN, as read_theta does). With ``phi``, also ``phi``: a dict
    of the same form for the feedback coefficients (``terms``, ``names``, ``per_trial``,
    ``mean``/``ci_low``/``ci_high`` keyed ``phi_s``, ``n_trials_used``; the ``diverged``
    flags, ``level`` and ``n_resamples`` are the top level's). Without it the file is as
    before plastic feedback existed.
    """
    terms = [int(r) for r in active_terms]
    th = np.atleast_2d(_numpy(theta))
    if th.shape[1] != N_TERMS:
        raise ValueError(f"theta must have shape (T, {N_TERMS}), got {th.shape}")
    if any(not 0 <= r < N_TERMS for r in terms):
        raise ValueError(f"active terms must lie in 0..{N_TERMS - 1}, got {terms}")
    div = np.atleast_1d(_numpy(diverged)).astype(bool)
    if div.shape != (th.shape[0],):
        raise ValueError(f"diverged must have shape ({th.shape[0]},), got {div.shape}")
    sel, stats, used = _coefficient_stats(th, terms, "theta", div, level, n_resamples, seed)
    out = {
        "terms": terms,
        "per_trial": sel.tolist(),
        "diverged": [bool(d) for d in div],
        **stats,
        "level": level,
        "n_resamples": n_resamples,
        "n_trials_used": used,
    }
    if (phi is None) != (feedback_terms is None):
        raise ValueError("give phi and feedback_terms together (a run with plastic feedback), or neither")
    if phi is not None:
        out["phi"] = _phi_summary(phi, feedback_terms, div, level, n_resamples, seed)
    write_json_atomic(Path(folder) / THETA_FILE, out)
    return out


def _phi_summary(phi: Any, feedback_terms: Iterable[int], div: np.ndarray, level: float, n_resamples: int,
                 seed: int) -> dict:
    """theta.json's ``phi`` entry: per trial, mean and bootstrap CI of the active phi_s."""
    terms = [int(s) for s in feedback_terms]
    ph = np.atleast_2d(_numpy(phi))
    if ph.shape != (div.shape[0], N_FEEDBACK_TERMS):
        raise ValueError(f"phi must have shape ({div.shape[0]}, {N_FEEDBACK_TERMS}), got {ph.shape}")
    if any(not 0 <= s < N_FEEDBACK_TERMS for s in terms):
        raise ValueError(f"feedback terms must lie in 0..{N_FEEDBACK_TERMS - 1}, got {terms}")
    sel, stats, used = _coefficient_stats(ph, terms, "phi", div, level, n_resamples, seed)
    return {
        "terms": terms,
        "names": [FEEDBACK_TERM_NAMES[s] for s in terms],
        "per_trial": sel.tolist(),
        **stats,
        "n_trials_used": used,
    }


def _coefficient_stats(values: np.ndarray, terms: list[int], symbol: str, div: np.ndarray, level: float,
                       n_resamples: int, seed: int) -> tuple[np.ndarray, dict, int]:
    """The columns ``terms`` of ``values (T, n)``, their ``mean``/``ci_low``/``ci_high`` keyed
    ``{symbol}_{r}`` (bootstrap over the trials that did not diverge and are finite), and the
    number of those trials."""
    sel = values[:, terms]
    usable = ~div & np.isfinite(sel).all(axis=1)
    mean, low, high = bootstrap_ci(np.where(usable[:, None], sel, np.nan), level=level,
                                   n_resamples=n_resamples, seed=seed)
    names = [f"{symbol}_{r}" for r in terms]
    stats = {k: dict(zip(names, np.atleast_1d(v).tolist())) for k, v in (("mean", mean), ("ci_low", low),
                                                                          ("ci_high", high))}
    return sel, stats, int(usable.sum())


def _nulls_to_nan(d: dict) -> dict:
    nan = float("nan")
    d["per_trial"] = [[nan if v is None else v for v in row] for row in d.get("per_trial", [])]
    for k in ("mean", "ci_low", "ci_high"):
        d[k] = {n: (nan if v is None else v) for n, v in d.get(k, {}).items()}
    return d


def read_theta(folder: str | os.PathLike) -> dict:
    """Read ``folder/theta.json``; nulls in the numeric fields come back as NaN (in its
    ``phi`` entry too, when the run had plastic feedback)."""
    d = _nulls_to_nan(_read_json(Path(folder) / THETA_FILE, "theta"))
    if isinstance(d.get("phi"), dict):
        _nulls_to_nan(d["phi"])
    return d


def read_phi(folder: str | os.PathLike) -> dict | None:
    """The ``phi`` entry of ``folder/theta.json`` (a run with plastic feedback: ``terms``,
    ``names``, ``per_trial``, ``mean``/``ci_low``/``ci_high`` keyed ``phi_s``,
    ``n_trials_used``, plus the file's ``diverged`` flags), nulls as NaN; None for a run whose
    feedback was fixed."""
    d = read_theta(folder)
    if not isinstance(d.get("phi"), dict):
        return None
    return {**d["phi"], "diverged": d.get("diverged", [])}


# ----------------------------------------------------------------- what a run reached

#: Episodes at the end of a trial that its final meta-accuracy averages over.
FINAL_EPISODES = 10


def _as_history(df_or_folder: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    return df_or_folder if isinstance(df_or_folder, pd.DataFrame) else read_history(df_or_folder)


def final_values(
    df: pd.DataFrame | str | os.PathLike, column: str, last: int = FINAL_EPISODES
) -> pd.Series:
    """Per trial the mean of one history column over the trial's last ``last`` episodes.

    Args:
        df: a history (:func:`read_history`), or a run folder / ``history.csv`` to read.
        column: a history column, e.g. ``"meta_accuracy"``, ``"alpha_2"``, ``"ortho_1"``.
        last: how many episodes at the end of each trial to average over.

    Returns:
        A float Series indexed by trial (sorted, index name ``trial``), one value per trial
        that did not diverge: trials with a ``diverged == 1`` row (stopped by the guards of
        :mod:`labkit.meta`) are left out. Non-finite values inside the window are skipped
        (NaN for a trial that has none). A (trial, episode) written twice counts once, with
        its last row.

    Raises:
        KeyError: the history lacks ``column`` (or ``trial`` / ``episode``).
        ValueError: ``last`` < 1.
    """
    if last < 1:
        raise ValueError(f"last must be >= 1 episode, got {last}")
    d = _as_history(df)
    missing = [c for c in ("trial", "episode", column) if c not in d.columns]
    if missing:
        raise KeyError(f"history lacks columns {missing}")
    d = d.drop_duplicates(["trial", "episode"], keep="last").sort_values(["trial", "episode"])
    if "diverged" in d.columns:
        d = d[~d["trial"].isin(d.loc[d["diverged"] != 0, "trial"])]
    vals = pd.to_numeric(d[column], errors="coerce").astype(float)
    vals = vals.where(np.isfinite(vals))
    tail = pd.DataFrame({"trial": d["trial"].astype(int), "v": vals}).groupby("trial").tail(last)
    out = tail.groupby("trial")["v"].mean().astype(float)  # skips NaN; all-NaN -> NaN
    out.name = column
    return out


def final_accuracies(df: pd.DataFrame | str | os.PathLike, last: int = FINAL_EPISODES) -> pd.Series:
    """Final meta-accuracy of every trial that did not diverge: per trial the mean
    ``meta_accuracy`` over its last ``last`` episodes, a Series indexed by trial
    (:func:`final_values` with ``column="meta_accuracy"``; see there for the details)."""
    return final_values(df, "meta_accuracy", last)


def final_accuracy(
    df: pd.DataFrame | str | os.PathLike,
    last: int = FINAL_EPISODES,
    seed: int = 0,
    *,
    level: float = 0.98,
    n_resamples: int = 500,
) -> tuple[float, float, float]:
    """The run's final meta-accuracy: ``(mean, ci_low, ci_high)`` over trials.

    The mean over the non-diverged trials of :func:`final_accuracies` (``df``, ``last``) and
    its percentile-bootstrap CI (:func:`labkit.stats.bootstrap_ci`: 98%, 500 resamples of the
    trials, resampling seed ``seed``). This is the definition behind every "final
    meta-accuracy" the project prints (README tables, the run summary of ``labkit
    discover``, the notebooks, ``scripts/summarize.py``). ``seed`` seeds the resampling
    only: the README, the notebooks and ``scripts/summarize.py`` use 0, the run summary
    passes the run's seed (the same numbers for the default seed 0; for another seed the
    CI bounds move slightly, the mean not at all). All three are NaN when no
    trial is left.
    """
    per_trial = final_accuracies(df, last).to_numpy(dtype=float)
    if not np.isfinite(per_trial).any():
        return math.nan, math.nan, math.nan
    mean, low, high = bootstrap_ci(per_trial, level=level, n_resamples=n_resamples, seed=seed)
    return float(mean), float(low), float(high)


def theta_matrix(folder: str | os.PathLike, include_diverged: bool = False) -> np.ndarray:
    """Final theta of every trial of a run folder, read from its ``theta.json``.

    Returns:
        ``(T, N_TERMS)`` float array: row i is trial i's final coefficients in term order
        (:data:`labkit.terms.TERMS`), zeros for the terms the rule does not use, NaN where
        the run wrote a non-finite value. Diverged trials are left out unless
        ``include_diverged`` (then T is the number of trials of the run, in trial order).

    Raises:
        FileNotFoundError: no ``theta.json`` in ``folder``.
        ValueError: the file names a term outside 0..N_TERMS-1, or its rows do not match it.
    """
    return _coefficient_matrix(read_theta(folder), N_TERMS, Path(folder) / THETA_FILE, "terms", "", include_diverged)


def _coefficient_matrix(entry: dict, n: int, where: Path, kind: str, what: str, include_diverged: bool) -> np.ndarray:
    """``(T, n)`` from a theta.json entry (``terms``, ``per_trial``, ``diverged``): each trial's
    values at its terms' indices, zeros elsewhere; diverged trials dropped unless
    ``include_diverged``. ``kind``/``what`` name the terms and values in error messages."""
    terms = [int(r) for r in entry.get("terms", [])]
    if any(not 0 <= r < n for r in terms):
        raise ValueError(f"{where}: {kind} must lie in 0..{n - 1}, got {terms}")
    rows = entry.get("per_trial", [])
    full = np.zeros((len(rows), n))
    for i, row in enumerate(rows):
        if len(row) != len(terms):
            raise ValueError(f"{where}: trial {i} has {len(row)}{what} values for {kind} {terms}")
        full[i, terms] = np.asarray(row, dtype=float)
    if include_diverged:
        return full
    flags = entry.get("diverged")
    diverged = np.asarray([False] * len(rows) if flags is None else flags, dtype=bool)
    if diverged.shape != (len(rows),):
        raise ValueError(f"{where}: {diverged.size} diverged flags for {len(rows)} trials{what and ' of' + what}")
    return full[~diverged]


def term_survival(folder: str | os.PathLike, keep: float = 0.8, coefficients: str = "theta") -> dict:
    """How often each term of a run's rule ends exactly nonzero, and the terms an L1 selection keeps.

    Stage 1 of the two-stage selection (docs/reproduction.md, "The {0, 2, 9} selection"): a
    run with the proximal L1 penalty ends some coefficients at exactly 0; a term *survives* a
    trial when its final coefficient is nonzero there, and is *selected* when it survives in
    at least ``keep`` of the non-diverged trials (stability selection; 0.8 by default).
    ``coefficients="phi"`` does the same for the feedback terms of a run with plastic
    feedback (the L1 penalty acts on phi too).

    Returns:
        ``{"terms": the rule's (or feedback rule's) terms, "trials": n, "survived": {term:
        count}, "keep": keep, "selected": [terms with count >= keep * n]}``; counts over
        non-diverged trials.

    Raises:
        ValueError: ``keep`` outside (0, 1], ``coefficients`` not "theta" or "phi", phi asked
            of a run whose feedback was fixed, or no trial left.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep is a fraction of the trials in (0, 1], got {keep}")
    if coefficients == "theta":
        entry, n, kind, what = read_theta(folder), N_TERMS, "terms", ""
    elif coefficients == "phi":
        entry, n, kind, what = read_phi(folder), N_FEEDBACK_TERMS, "feedback terms", " phi"
        if entry is None:
            raise ValueError(f"{folder}: the run's feedback was fixed; it has no phi to select from")
    else:
        raise ValueError(f'coefficients is "theta" or "phi", got {coefficients!r}')
    terms = [int(r) for r in entry["terms"]]
    values = _coefficient_matrix(entry, n, Path(folder) / THETA_FILE, kind, what, include_diverged=False)
    if values.shape[0] == 0:
        raise ValueError(f"{folder}: every trial diverged; there is nothing to select from")
    counts = {r: int(np.count_nonzero(values[:, r])) for r in terms}
    need = keep * values.shape[0]
    return {"terms": terms, "trials": int(values.shape[0]), "survived": counts, "keep": keep,
            "selected": [r for r in terms if counts[r] >= need - 1e-9]}


def phi_matrix(folder: str | os.PathLike, include_diverged: bool = False) -> np.ndarray | None:
    """Final phi of every trial of a run with plastic feedback, read from its ``theta.json``.

    Returns:
        ``(T, N_FEEDBACK_TERMS)`` float array, rows as :func:`theta_matrix`'s (trial order,
        diverged trials left out unless ``include_diverged``), zeros for the feedback terms
        that were not plastic; None when the run's feedback was fixed (no ``phi`` entry).

    Raises:
        FileNotFoundError: no ``theta.json`` in ``folder``.
        ValueError: the entry names a term outside 0..N_FEEDBACK_TERMS-1, or its rows do not match.
    """
    ph = read_phi(folder)
    if ph is None:
        return None
    return _coefficient_matrix(ph, N_FEEDBACK_TERMS, Path(folder) / THETA_FILE, "feedback terms", " phi",
                               include_diverged)


def _rule_text(cfg: dict) -> str:
    """A run's rule as ``labkit discover --rule`` takes it: its name, or for a per-layer rule
    the term lists of its weight layers (``0,2/0/0``)."""
    layers = cfg.get("layer_terms")
    if layers and len({tuple(ts) for ts in layers}) > 1:
        return "/".join(",".join(map(str, ts)) for ts in layers)
    return str(cfg.get("rule", "?"))


def run_table(folders: Iterable[str | os.PathLike], labels: Iterable[str] | None = None,
              level: float = 0.98) -> pd.DataFrame:
    """One row per run folder: what it ran and what it reached, as the README and notebooks report it.

    Columns: ``run`` (the label, default the folder's name), ``rule`` (:func:`_rule_text`),
    ``feedback`` (the pathway, ``+ <feedback rule>`` when B was plastic), ``trials``,
    ``episodes``, ``accuracy``/``ci_low``/``ci_high`` (:func:`final_accuracy`, fractions),
    ``alpha_1..alpha_{L-1}``, ``weight_angle_1..weight_angle_L`` (degrees) and
    ``ortho_1..ortho_L`` (:func:`final_values` averaged over the non-diverged trials),
    ``theta_r`` / ``phi_s`` (mean final coefficients of the active terms, from
    ``theta.json``), ``guarded`` (trial-episodes the guards acted on, besides divergences)
    and ``diverged`` (trials). Runs of different depths share the frame; a column a run
    lacks is NaN there.
    """
    folders = [Path(f) for f in folders]
    names = [f.name for f in folders] if labels is None else list(labels)
    if len(names) != len(folders):
        raise ValueError(f"{len(names)} labels for {len(folders)} folders; give one label per folder")
    rows = []
    for name, folder in zip(names, folders):
        df, cfg, th = read_history(folder), read_config(folder), read_theta(folder)
        L = history_n_layers(df)
        m, lo, hi = final_accuracy(df, level=level)
        feedback = str(cfg.get("feedback", "?")) + (f" + {cfg['feedback_rule']}" if cfg.get("feedback_rule") else "")
        row: dict[str, Any] = {"run": name, "rule": _rule_text(cfg), "feedback": feedback,
                               "trials": int(df["trial"].nunique()), "episodes": int(df["episode"].max()),
                               "accuracy": m, "ci_low": lo, "ci_high": hi}
        for col in ([f"alpha_{l}" for l in range(1, L)] + [f"weight_angle_{l}" for l in range(1, L + 1)]
                    + [f"ortho_{l}" for l in range(1, L + 1)]):
            v = final_values(df, col).to_numpy(dtype=float) if col in df.columns else np.array([])
            row[col] = float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan
        row.update(th["mean"])
        ph = th.get("phi")
        if isinstance(ph, dict):
            row.update(ph["mean"])
        diverged = int(df.groupby("trial")["diverged"].max().sum())
        row["guarded"] = int((df["guarded"].fillna("") != "").sum() - df["diverged"].sum())
        row["diverged"] = diverged
        rows.append(row)
    return pd.DataFrame(rows)
