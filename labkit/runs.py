"""A meta-training run on one process or spread over Dask workers, with the same numbers.

Trials are independent: each has its own generators (seeded by (seed, trial)), its own
theta, Adam state and guards. So a run of T trials can be cut into parts of consecutive
trials, each part meta-trained from start to end on its own worker as an ordinary run in a
sub-folder ``parts/trials_A-B`` of the results folder, and the parts merged: ``history.csv``
rows are copied as text in the order one process writes them (by episode, then trial), the
checkpoints' per-trial states are concatenated. The merged folder equals a one-process run's
bit for bit on the same kind of machine (tests/test_runs.py), whatever the number of parts.

This "trials" split is the default of ``labkit discover --workers N``; the "episode" split
(every episode's trial chunks farmed out, :func:`labkit.meta.chunked_meta_gradient`) stays
selectable with ``--split episode``. docs/scale-out.md compares them.

Stopping: Ctrl-C asks every part to checkpoint after its current episode (a Dask ``Event``),
then the parts' rows so far are merged into ``history.csv`` and the parts are kept for
``--resume``, which continues each part where it stopped, with the split it started with.
A worker that dies loses only its part's episodes since the part's last checkpoint: Dask
runs the part again elsewhere and it resumes from that checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Sequence

import torch

from .meta import (CHECKPOINT_FILE, CheckpointError, DivergenceError, MetaConfig, MetaTrainer, RunSummary, command_line,
                   merge_states, run_command, slice_state)
from .results import FolderLock, check_writable, merge_histories, write_config, write_theta
from .workers import connect, scheduler_address, set_worker_threads, worker_count

__all__ = ["SPLITS", "PARTS_DIR", "split_trials", "discover", "run_part"]

SPLITS = ("trials", "episode")
PARTS_DIR = "parts"
_SPLIT_FILE = "split.json"


def split_trials(trials: int, parts: int, chunk: int | None = None) -> list[list[int]]:
    """Consecutive trial ranges for ``parts`` workers, sizes differing by at most one; with
    ``chunk``, made of whole chunks of ``chunk`` trials (the last one possibly shorter), so that
    every part batches its trials exactly as one process does (compiled kernels are made for
    one batch size each and round differently for another, so a compiled run splits only at
    chunk boundaries)."""
    if chunk is not None:
        chunks = [list(range(a, min(trials, a + chunk))) for a in range(0, trials, chunk)]
        groups = split_trials(len(chunks), parts)
        return [[i for k in g for i in chunks[k]] for g in groups]
    n = max(1, min(trials, parts))
    sizes = [trials // n + (k < trials % n) for k in range(n)]  # the larger parts first
    starts = [sum(sizes[:k]) for k in range(n)]
    return [list(range(a, a + m)) for a, m in zip(starts, sizes)]


def _part_dir(out: Path, ids: Sequence[int]) -> Path:
    return out / PARTS_DIR / f"trials_{ids[0]}-{ids[-1]}"


def run_part(config: dict, folder: str, trials: list[int], token: str, stop_event: str | None = None,
             command: str | None = None) -> dict:
    """Meta-train one part (the trials ``trials``) in ``folder``, resuming from its checkpoint
    when it has one. Runs on a Dask worker; returns the part's episode count and seconds.
    ``command``: the run's command line, for the part's config.json."""
    with command_line(command):
        return _run_part(config, folder, trials, token, stop_event)


def _run_part(config: dict, folder: str, trials: list[int], token: str, stop_event: str | None) -> dict:
    cfg = MetaConfig(**config)
    set_worker_threads(cfg.threads)
    folder_p = Path(folder)
    stop = None
    if stop_event is not None:
        from distributed import Event

        ev = Event(stop_event)
        stop = ev.is_set
    resume = (folder_p / CHECKPOINT_FILE).exists()
    trainer = MetaTrainer(cfg, out=folder_p, resume=resume, trials=trials, token=token)
    start = time.perf_counter()
    try:
        trainer.run(progress=False, should_stop=stop)
    except DivergenceError:
        pass  # every trial of this part diverged: the others decide; the merge reports it
    return {"trials": trials, "episode": trainer.episode, "seconds": time.perf_counter() - start}


def _last_episode(folder: Path) -> int:
    """The episode of the last complete row of ``folder/history.csv`` (0 if none), cheaply."""
    path = folder / "history.csv"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return 0
    lines = [l for l in tail[: tail.rfind("\n")].splitlines() if l and not l.startswith("trial")]
    try:
        return int(lines[-1].split(",")[1]) if lines else 0
    except (ValueError, IndexError):
        return 0


def _prepare_parts(cfg: MetaConfig, out: Path, resume: bool, n_parts: int) -> list[list[int]]:
    """The split of this run: the one recorded in ``parts/split.json`` (a resumed distributed
    run), else a new one; a resumed one-process run's checkpoint and history are cut into
    the parts' folders first."""
    split_file = out / PARTS_DIR / _SPLIT_FILE
    if resume and split_file.exists():
        return json.loads(split_file.read_text())["parts"]
    ckpt = out / CHECKPOINT_FILE
    if resume and not ckpt.exists():
        raise CheckpointError(
            f"--resume: {out} has no {CHECKPOINT_FILE} to continue from"
            + ("" if (out / "history.csv").exists() else "; run without --resume to start a new run")
        )
    if not resume and (out / "history.csv").exists():
        raise FileExistsError(f"{out} already holds a run (history.csv); pass --resume to continue it, "
                              "or choose another --out folder")
    parts = split_trials(cfg.trials, n_parts, cfg.chunk if cfg.compile else None)
    if (out / PARTS_DIR).exists():
        shutil.rmtree(out / PARTS_DIR)  # leftovers of a merged run
    (out / PARTS_DIR).mkdir(parents=True)
    if resume:
        state = torch.load(ckpt, weights_only=False)
        text = (out / "history.csv").read_text().splitlines() if (out / "history.csv").exists() else []
        header, lines = (text[0], text[1:]) if text else (None, [])
        for ids in parts:
            pdir = _part_dir(out, ids)
            pdir.mkdir(parents=True)
            torch.save(slice_state(state, ids), pdir / CHECKPOINT_FILE)
            if header is not None:
                keep = set(ids)
                mine = [l for l in lines if l and int(l.split(",", 1)[0]) in keep]
                (pdir / "history.csv").write_text("\n".join([header, *mine]) + "\n")
    split_file.write_text(json.dumps({"parts": parts}) + "\n")
    return parts


def _merge(trainer: MetaTrainer, out: Path, parts: list[list[int]], record: dict, final: bool) -> dict | None:
    """Merge the parts' histories into ``out/history.csv``; when ``final``, also their
    checkpoints into ``out/checkpoint.pt`` and theta.json, and remove ``parts/``.
    ``trainer``: one over all trials (out=None), for the run's settings and records."""
    cfg = trainer.config
    dirs = [_part_dir(out, ids) for ids in parts]
    merge_histories(dirs, out)
    if not final:
        return None
    state = merge_states([torch.load(d / CHECKPOINT_FILE, weights_only=False) for d in dirs])
    state["trials"] = list(range(cfg.trials))
    tmp = out / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / CHECKPOINT_FILE)
    write_theta(out, state["theta"].numpy(), record["terms"], state["guards"]["stopped"].numpy(), seed=cfg.seed,
                **trainer._phi_record(state.get("phi")))
    write_config(out, record)
    shutil.rmtree(out / PARTS_DIR)
    return state


def discover(config: MetaConfig, out: str | Path | None, resume: bool = False, scheduler: str | None = None,
             split: str = "trials", progress: bool = True) -> RunSummary:
    """Run ``labkit discover``'s meta-training: in this process when ``config.workers`` is 1
    and no scheduler is given (``scheduler`` or ``$LABKIT_SCHEDULER``), else on Dask workers,
    split by ``split`` ("trials": whole runs over parts of the trials; "episode": each
    episode's trial chunks). Same numbers either way (tests/test_runs.py)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    c = config.resolved()
    address = scheduler_address(scheduler)
    parted = out is not None and resume and (Path(out) / PARTS_DIR / _SPLIT_FILE).exists()
    if parted and split == "episode":
        raise CheckpointError(f"{out} holds a run started with the trials split (its parts/ folder); "
                              "resume it without --split episode")
    if parted:
        return _discover_split(c, Path(out), resume, address, progress)  # finish the parts it started with
    if c.workers == 1 and address is None:
        return MetaTrainer(config, out=out, resume=resume).run(progress=progress)
    if split == "episode" or out is None:
        with connect(c.workers, address) as client:
            return MetaTrainer(config, out=out, resume=resume).run(progress=progress, client=client)
    return _discover_split(c, Path(out), resume, address, progress)


def _discover_split(c: MetaConfig, out: Path, resume: bool, address: str | None, progress: bool) -> RunSummary:
    out = check_writable(out).resolve()  # workers elsewhere see the same absolute path (shared storage)
    token = uuid.uuid4().hex
    with FolderLock(out, token):
        # a trainer over all trials validates everything and writes config.json, before any work
        probe = MetaTrainer(c, out=None)
        record = probe.config_record()
        record["split"] = "trials"
        start = time.perf_counter()
        with connect(c.workers, address) as client:
            n = c.workers if address is None else worker_count(client)
            parts = _prepare_parts(c, out, resume, n)
            write_config(out, record)
            from distributed import Event

            event_name = f"labkit-stop-{token}"
            stop = Event(event_name, client=client)
            cfg_dict = {**dataclasses.asdict(c), "workers": 1}  # each part runs in its worker alone
            futures = [
                client.submit(run_part, cfg_dict, str(_part_dir(out, ids)), ids, token, event_name, run_command(),
                              key=f"labkit-part-{ids[0]}-{ids[-1]}-{token}", pure=False)
                for ids in parts
            ]
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=c.episodes, desc=f"{probe.rule.name}/{c.feedback} on {len(parts)} parts",
                           unit="ep", dynamic_ncols=True)
            try:
                while not all(f.done() for f in futures):
                    time.sleep(0.5)
                    if bar is not None:
                        done = min(_last_episode(_part_dir(out, ids)) for ids in parts)
                        bar.update(done - bar.n)
                errors = [f.exception() for f in futures if f.status == "error"]
                if errors:
                    raise RuntimeError(
                        f"a part of the run failed on its worker ({type(errors[0]).__name__}: {errors[0]}); "
                        f"the parts' checkpoints are kept in {out / PARTS_DIR}: continue with --resume"
                    )
            except BaseException:
                # Ctrl-C or a failure: parts checkpoint after their current episode and return
                stop.set()
                for f in futures:
                    try:
                        f.result(timeout=120)
                    except Exception:
                        pass
                if bar is not None:
                    bar.close()
                _merge(probe, out, parts, record, final=False)
                raise
            if bar is not None:
                bar.update(c.episodes - bar.n)
                bar.close()
        state = _merge(probe, out, parts, record, final=True)
    # the summary of the merged run, read back like a one-process run's
    trainer = probe
    trainer.episode = int(state["episode"])
    trainer.theta = state["theta"]
    if trainer.phi is not None:
        trainer.phi = state["phi"]
    trainer.guards.load_state_dict(state["guards"])
    trainer.out = out
    summary = trainer.summary(time.perf_counter() - start, [])
    if bool(trainer.stopped.all()):
        raise DivergenceError(f"all {c.trials} trials diverged; results up to then are kept in {out}")
    return summary

