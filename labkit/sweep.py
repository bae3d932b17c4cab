"""A grid of meta-training runs: every combination of the listed settings, one results folder
per cell, run as Dask tasks, with a table of the final meta-accuracies.

A sweep is a base configuration (any :class:`labkit.meta.MetaConfig` field, i.e. any
``labkit discover`` flag) and a grid (field -> values), given as flags or as a TOML file::

    # sweep.toml
    out = "sweeps/lambda"
    [base]
    rule = "pool"
    trials = 4
    episodes = 100
    [grid]
    lam = [0.0, 1e-4, 1e-3]
    seed = [0, 1]

Folder layout: ``OUT/cells/<name>/`` (an ordinary run folder per cell, its name from its
grid values), ``OUT/sweep.csv`` (one row per cell: the grid values, the folder, the status,
episodes done, trials, diverged trials, final meta-accuracy and its 98% CI), ``OUT/sweep.json``
(the sweep's definition). Cells run as Dask tasks, one per worker at a time. Running the same
sweep again skips finished cells and resumes unfinished ones from their checkpoints; a worker
lost in the middle of a cell costs that cell's episodes since its last checkpoint (Dask runs
the cell again on another worker, which resumes it).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .meta import CHECKPOINT_FILE, DivergenceError, MetaConfig, MetaTrainer, command_line, run_command
from .results import FolderLock, check_writable, final_accuracy, read_history, write_json_atomic
from .workers import connect, set_worker_threads

__all__ = ["SweepError", "Sweep", "Cell", "parse_value", "parse_assignment", "load_sweep", "run_sweep",
           "TABLE_FILE", "CELLS_DIR"]

TABLE_FILE = "sweep.csv"
CELLS_DIR = "cells"
_SPEC_FILE = "sweep.json"
# flag spellings of MetaConfig fields that differ from the field names
_ALIASES = {"lambda": "lam", "terms": "rule"}
_PER_CELL_FIXED = ("workers",)  # a cell runs on one worker; the sweep spreads the cells


class SweepError(ValueError):
    """A sweep definition that cannot run (named setting unknown, bad value, bad file)."""


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(MetaConfig)}


def _field_name(name: str) -> str:
    key = name.strip().lstrip("-").replace("-", "_")
    key = _ALIASES.get(key.lower(), key)
    by_lower = {f.lower(): f for f in _fields()}
    key = key if key in _fields() else by_lower.get(key.lower(), key)
    if key not in _fields():
        raise SweepError(
            f"unknown setting {name!r}; a sweep varies labkit discover's settings: "
            + ", ".join(sorted(_fields()))
        )
    if key in _PER_CELL_FIXED:
        raise SweepError(f"{name!r} cannot vary per cell: every cell runs on one worker; give --workers to "
                         "labkit sweep to run several cells at once")
    return key


def parse_value(key: str, text: str) -> Any:
    """A setting's value from text: numbers, true/false, none/off, layer sizes as 170x130."""
    t = text.strip()
    low = t.lower()
    if key == "hidden":
        try:
            return tuple(int(v) for v in re.split(r"[x:]", t) if v)
        except ValueError:
            raise SweepError(f"hidden: layer sizes as 170x130x100x70, got {text!r}") from None
    if low in ("none", "off", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_assignment(text: str, many: bool) -> tuple[str, Any]:
    """``"lam=1e-4,1e-3"`` -> ``("lam", [1e-4, 1e-3])`` (``many``) or ``"trials=4"`` -> ``("trials", 4)``.
    A rule given as term numbers is written with ``+``: ``rule=0+2+9``."""
    if "=" not in text:
        raise SweepError(f"expected NAME=VALUE{',VALUE...' if many else ''}, got {text!r}")
    name, _, vals = text.partition("=")
    key = _field_name(name)
    if many:
        items = [v for v in vals.split(",") if v.strip()]
        if not items:
            raise SweepError(f"{name}: no values in {text!r}")
        return key, [_from_text(key, v) for v in items]
    return key, _from_text(key, vals)


def _from_text(key: str, v: str) -> Any:
    if key in ("rule", "feedback_rule") and "+" in v:
        return v.replace("+", ",")
    return parse_value(key, v)


def _normalise(key: str, v: Any) -> Any:
    if key == "hidden" and isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    if key == "hidden" and isinstance(v, str):
        return parse_value(key, v)
    if key in ("rule", "feedback_rule") and isinstance(v, (list, tuple)):
        return ",".join(str(int(x)) for x in v)
    return v


def _slug(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        v = "x".join(str(x) for x in v)
    s = re.sub(r"[^A-Za-z0-9.+-]+", "+", str(v))
    return s.strip("+") or "none"


@dataclass
class Cell:
    """One combination of the grid: its values, its folder and its full configuration."""

    values: dict[str, Any]
    folder: Path
    config: MetaConfig


@dataclass
class Sweep:
    """A base configuration, a grid over settings, and the output folder."""

    out: Path
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.base = {_field_name(k): _normalise(_field_name(k), v) for k, v in self.base.items()}
        grid = {}
        for k, vs in self.grid.items():
            key = _field_name(k)
            if not isinstance(vs, (list, tuple)) or not len(vs):
                raise SweepError(f"grid {k}: give a list of values, got {vs!r}")
            grid[key] = [_normalise(key, v) for v in vs]
        self.grid = grid
        both = set(self.base) & set(self.grid)
        if both:
            raise SweepError(f"{sorted(both)} given both as a fixed setting and in the grid; keep one")

    def cells(self) -> list[Cell]:
        """Every combination, validated (raises :class:`SweepError` naming the bad cell)."""
        keys = list(self.grid)
        cells = []
        for combo in itertools.product(*(self.grid[k] for k in keys)) if keys else [()]:
            values = dict(zip(keys, combo))
            name = "_".join(f"{k}={_slug(v)}" for k, v in values.items()) or "base"
            try:
                cfg = MetaConfig(**{**self.base, **values, "workers": 1})
                cfg.resolved()
            except (TypeError, ValueError) as exc:
                raise SweepError(f"cell {name}: {exc}") from None
            cells.append(Cell(values, self.out / CELLS_DIR / name, cfg))
        return cells

    def to_json(self) -> dict:
        return {"base": self.base, "grid": self.grid}


def load_sweep(path: str | Path | None, grid: Sequence[str] = (), fixed: Sequence[str] = (),
               out: str | Path | None = None) -> Sweep:
    """A sweep from a TOML file (optional) plus ``--grid NAME=V1,V2`` and ``--set NAME=V``
    flags (which extend or override the file); ``out`` overrides the file's ``out``."""
    base: dict[str, Any] = {}
    g: dict[str, list] = {}
    file_out = None
    if path is not None:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        p = Path(path)
        if not p.is_file():
            raise SweepError(f"no sweep file at {p}")
        try:
            spec = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SweepError(f"{p} is not valid TOML: {exc}") from None
        unknown = set(spec) - {"out", "base", "grid"}
        if unknown:
            raise SweepError(f"{p}: unknown top-level keys {sorted(unknown)}; a sweep file has out, [base] and [grid]")
        base.update(spec.get("base", {}))
        g.update(spec.get("grid", {}))
        file_out = spec.get("out")
    for text in fixed:
        k, v = parse_assignment(text, many=False)
        g.pop(k, None)
        base[k] = v
    for text in grid:
        k, vs = parse_assignment(text, many=True)
        base.pop(k, None)
        g[k] = vs
    target = out if out is not None else file_out
    if target is None:
        raise SweepError("give the sweep's output folder: --out DIR (or out = \"DIR\" in the sweep file)")
    return Sweep(Path(target), base, g)


def _finished(folder: Path, episodes: int) -> bool:
    """A cell is finished when its checkpoint is at the last episode (or its trials all stopped)."""
    import torch

    ckpt = folder / CHECKPOINT_FILE
    if not ckpt.exists() or not (folder / "theta.json").exists():
        return False
    try:
        s = torch.load(ckpt, weights_only=False)
    except Exception:
        return False
    return int(s["episode"]) >= episodes or bool(s["guards"]["stopped"].all())


def run_cell(config: dict, folder: str, token: str, command: str | None = None) -> dict:
    """Meta-train one cell in ``folder`` (resuming from its checkpoint when it has one); runs on
    a Dask worker. Returns its status. ``command``: the sweep's command line, for the cell's
    config.json."""
    with command_line(command):
        return _run_cell(config, folder, token)


def _run_cell(config: dict, folder: str, token: str) -> dict:
    cfg = MetaConfig(**config)
    set_worker_threads(cfg.threads)
    f = Path(folder)
    trainer = MetaTrainer(cfg, out=f, resume=(f / CHECKPOINT_FILE).exists(), token=token)
    start = time.perf_counter()
    try:
        trainer.run(progress=False)
        status = "done"
    except DivergenceError:
        status = "diverged"
    return {"folder": folder, "status": status, "seconds": time.perf_counter() - start}


def _row(cell: Cell, status: str) -> dict:
    row: dict[str, Any] = {k: ("x".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in cell.values.items()}
    row.update(folder=str(cell.folder), status=status, episodes=0, trials=cell.config.trials, diverged=0,
               meta_accuracy=float("nan"), ci_low=float("nan"), ci_high=float("nan"))
    if (cell.folder / "history.csv").exists():
        df = read_history(cell.folder)
        if len(df):
            row["episodes"] = int(df["episode"].max())
            row["diverged"] = int(df.groupby("trial")["diverged"].max().sum())
            if status in ("done", "diverged", "skipped (finished)"):
                try:
                    mean, lo, hi = final_accuracy(df, seed=cell.config.seed)
                    row.update(meta_accuracy=mean, ci_low=lo, ci_high=hi)
                except ValueError:
                    pass
    return row


def run_sweep(sweep: Sweep, workers: int = 1, scheduler: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every unfinished cell of ``sweep`` on Dask (``workers`` local processes, or the
    cluster at ``scheduler``); write and return the sweep table (``OUT/sweep.csv``).

    Cells that fail (a worker lost more often than Dask retries, an error) are marked in the
    table and the others go on; run the sweep again to resume them.
    """
    sweep = dataclasses.replace(sweep, out=check_writable(sweep.out).resolve())  # the same path on every worker
    cells = sweep.cells()  # validates every cell before any work
    token = uuid.uuid4().hex
    with FolderLock(sweep.out, token):
        spec = sweep.out / _SPEC_FILE  # the latest definition (cells of other grids stay on disk)
        write_json_atomic(spec, sweep.to_json())
        status: dict[str, str] = {}
        todo = []
        for cell in cells:
            if _finished(cell.folder, cell.config.resolved().episodes):
                status[cell.folder.name] = "skipped (finished)"
            else:
                todo.append(cell)
        if todo:
            with connect(workers, scheduler) as client:
                futures = {
                    client.submit(run_cell, dataclasses.asdict(cell.config), str(cell.folder), token, run_command(),
                                  key=f"labkit-cell-{cell.folder.name}-{token}", pure=False): cell
                    for cell in todo
                }
                from distributed import as_completed

                bar = None
                if progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="sweep cells", unit="cell")
                for fut in as_completed(list(futures)):
                    cell = futures[fut]
                    try:
                        status[cell.folder.name] = fut.result()["status"]
                    except Exception as exc:  # KilledWorker after Dask's retries, or an error in the cell
                        status[cell.folder.name] = f"failed ({type(exc).__name__}): run the sweep again to resume"
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    bar.close()
        table = pd.DataFrame([_row(cell, status[cell.folder.name]) for cell in cells])
        tmp = sweep.out / (TABLE_FILE + ".tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(sweep.out / TABLE_FILE)
    return table
