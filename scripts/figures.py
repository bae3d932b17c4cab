"""Every committed figure in figures/, the command that makes it, and a check that they are current.

    .venv/bin/python scripts/figures.py --check   # regenerate into a temporary folder and compare
    .venv/bin/python scripts/figures.py --write   # regenerate into figures/

GROUPS below is the one list of what makes figures/: the ``labkit figures`` calls on the
committed result folders in results/, and the four notebooks run in full mode with papermill
(SMOKE=False, RESULTS_DIR=results). scripts/reproduce.sh calls ``--write``; the test suite
(tests/test_figures.py) regenerates into a temporary folder and requires :func:`compare` to
find nothing, so a stale, missing or orphaned figure fails CI with its name and the command
that regenerates it.

Every file a group writes starts with the group's prefix (checked when regenerating), so a file
name alone tells which command makes it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"
RESULTS = ROOT / "results"
LABKIT = ".venv/bin/labkit"  # as the commands are printed (run from the repository root)
KERNEL = "python3"


@dataclass(frozen=True)
class Group:
    """One command that writes the figures whose names start with ``prefix``.

    ``labkit``: the arguments of ``labkit figures`` (without ``--out``/``--prefix``), or
    ``notebook``: a notebook in notebooks/ run with papermill and ``parameters`` on top of
    SMOKE=False, RESULTS_DIR=results, FIG_DIR=<output folder>. ``needs``: a file (relative to
    the repository root) without which the group is skipped.
    """

    prefix: str
    labkit: tuple[str, ...] = ()
    notebook: str = ""
    parameters: dict = field(default_factory=dict)
    needs: str = ""

    @property
    def name(self) -> str:
        return Path(self.notebook).stem if self.notebook else self.prefix

    def active(self, root: Path = ROOT) -> bool:
        return not self.needs or (root / self.needs).is_file()

    def command(self) -> str:
        """The shell command (from the repository root) that writes this group into figures/."""
        if self.labkit:
            return shlex.join([LABKIT, "figures", *self.labkit, "--out", "figures", "--prefix", self.prefix])
        params = [("SMOKE", False), ("RESULTS_DIR", "../results"), ("FIG_DIR", "../figures"), *self.parameters.items()]
        args = ["../.venv/bin/papermill", self.notebook, "$(mktemp -d)/" + self.notebook, "-k", KERNEL, "--cwd", "."]
        for k, v in params:
            args += ["-p", k, str(v)]
        return "(cd notebooks && MPLBACKEND=Agg " + " ".join(a if a.startswith("$(") else shlex.quote(a) for a in args) + ")"


# The one list. The labkit calls were those of scripts/reproduce.sh; each writes
# {prefix}{meta_accuracy,meta_loss,theta,alignment,orthonormality}.png.
GROUPS: tuple[Group, ...] = (
    Group("fig3_", labkit=("results/paper/fa_lr", "results/paper/bp_lr", "results/paper/dfa_lr", "results/paper/usf_lr",
                           "results/paper/frsf_lr", "results/paper/drtp_lr",
                           "--labels", "FA", "BP", "DFA", "uSF", "frSF", "DRTP")),
    Group("pathways_bio_", labkit=("results/paper/bio", "results/paper/usf_bio", "results/paper/frsf_bio",
                                   "results/paper/drtp_bio",
                                   "--labels", "bio, FA", "bio, uSF", "bio, frSF", "bio, DRTP")),
    Group("fig4_", labkit=("results/paper/fa_lr", "results/paper/bp_lr", "results/paper/pool",
                           "results/paper/pool_refit", "results/paper/bio",
                           "--labels", "FA", "BP", "pool", "pool refit", "bio")),
    Group("pool20x600_", labkit=("results/pool_20x600", "--labels", "pool 20x600"), needs="results/pool_20x600/theta.json"),
    Group("bio20x600_", labkit=("results/bio_20x600", "--labels", "bio 20x600"), needs="results/bio_20x600/theta.json"),
    Group("fig5_", labkit=("results/paper/fa_lr", "results/paper/ehebb", "results/paper/bio",
                           "--labels", "FA", "eHebb", "bio")),
    Group("fig7_", labkit=("results/paper/fa_lr", "results/paper/oja", "--labels", "FA", "Oja")),
    # The committed 01_* figures were made on the bundled digits (MNIST is not in a checkout: the
    # notebook falls back to digits); pinning it keeps the check from depending on a local data/.
    Group("01_", notebook="01_feedback_alignment.ipynb", parameters={"DATASET": "digits"}),
    Group("02_", notebook="02_discovering_rules.ipynb"),
    Group("03_", notebook="03_interpreting_rules.ipynb"),
    Group("04_", notebook="04_playground.ipynb"),
    # 05 reads the three plastic-feedback runs; until all are committed it would draw tiny stand-ins
    Group("05_", notebook="05_plastic_feedback.ipynb", needs="results/pool_fbpool/theta.json"),
    Group("06_", notebook="06_beyond_the_paper.ipynb", needs="results/beyond/deep_init.json"),
)


def group_of(filename: str, groups: tuple[Group, ...] = GROUPS) -> Group | None:
    """The group whose prefix starts ``filename`` (the longest such prefix), if any."""
    matches = [g for g in groups if filename.startswith(g.prefix)]
    return max(matches, key=lambda g: len(g.prefix)) if matches else None


class RegenerationError(RuntimeError):
    pass


def _run_group(group: Group, out: Path, executed: Path, kernel: str) -> None:
    if group.labkit:
        # `labkit figures` in this process (the same code as the command; saves a start-up per group)
        import contextlib
        import io

        import matplotlib

        matplotlib.use("Agg")
        from labkit.cli import main as labkit_main

        folders = [str(ROOT / f) if f.startswith("results/") else f for f in group.labkit]
        argv = ["figures", *folders, "--out", str(out), "--prefix", group.prefix]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = labkit_main(argv)
        if code:
            raise RegenerationError(f"{group.name}: exit {code} from\n  {group.command()}\n{buf.getvalue()[-2000:]}")
        return
    os.environ["MPLBACKEND"] = "Agg"  # the kernel inherits it
    import papermill

    parameters = {"SMOKE": False, "RESULTS_DIR": str(RESULTS), "FIG_DIR": str(out), **group.parameters}
    try:
        papermill.execute_notebook(str(ROOT / "notebooks" / group.notebook), str(executed / group.notebook),
                                   parameters=parameters, kernel_name=kernel, cwd=str(ROOT / "notebooks"),
                                   progress_bar=False)
    except Exception as exc:  # papermill's PapermillExecutionError names the failing cell
        raise RegenerationError(f"{group.name} failed ({exc.__class__.__name__}) from\n  {group.command()}\n"
                                f"{str(exc)[-3000:]}") from exc


def regenerate(out_dir: str | os.PathLike, kernel: str = KERNEL, executed_dir: str | os.PathLike | None = None,
               groups: tuple[Group, ...] = GROUPS, verbose: bool = False) -> dict[str, Group]:
    """Run every (active) group, writing its figures into ``out_dir``; returns {file name: group}.

    Each group runs into an empty folder of its own first, so that a group writing a file
    outside its prefix, or a file another group also writes, is an error rather than a silent
    overwrite. Executed notebooks go to ``executed_dir`` (default: a temporary folder); the
    committed notebooks stay output-free.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = Path(executed_dir) if executed_dir else Path(tempfile.mkdtemp(prefix="labkit_executed_"))
    executed.mkdir(parents=True, exist_ok=True)
    made: dict[str, Group] = {}
    with tempfile.TemporaryDirectory(prefix="labkit_figures_stage_") as stage_root:
        for i, group in enumerate(g for g in groups if g.active()):
            stage = Path(stage_root) / str(i)
            stage.mkdir()
            start = time.perf_counter()
            _run_group(group, stage, executed, kernel)
            files = sorted(p.name for p in stage.iterdir())
            if verbose:
                print(f"{group.name:24s} {time.perf_counter() - start:5.1f} s  {len(files)} files", flush=True)
            if not files:
                raise RegenerationError(f"{group.name} wrote no figure:\n  {group.command()}")
            stray = [f for f in files if group_of(f, groups) is not group]
            if stray:
                raise RegenerationError(f"{group.name} wrote files outside its prefix {group.prefix!r}: {stray}")
            twice = [f for f in files if f in made]
            if twice:
                raise RegenerationError(f"{group.name} wrote files another group also writes: {twice}")
            for f in files:
                shutil.move(str(stage / f), out_dir / f)
                made[f] = group
    return made


# Pixel tolerance. A pixel "differs" when some channel (RGBA, 0-255) changes by more than
# PIXEL_THRESHOLD; a figure differs when more than MAX_FRACTION of its pixels differ.
# Measured when this was chosen (percent of pixels differing by more than 48/255):
# - two regenerations on one machine: byte-identical, all 51 figures (notebooks 01 and 04 also
#   with 2 torch threads instead of 1), so the tolerance is only for other machines, where
#   float noise in the notebooks' live runs could move curves by a fraction of a pixel;
# - a proxy for that noise, every value of fig3's history.csv files times (1 + 1e-4 N(0,1)):
#   0.000% in all five figures (largest change 27/255); times (1 + 1e-3 N(0,1)): at most 0.053%;
# - genuinely different figures: one legend label of fig3 changed by one letter (DRTP -> DRTQ):
#   theta 0.146%, alignment and orthonormality 0.29%, meta-accuracy/-loss 2.7-4.1%; fig4's
#   committed titles in an older format: 0.26-0.74%; a different result folder in a run: 2-8%.
# The ~0.5% first proposed would pass a changed label or title in the larger figures, so the
# limit is 0.1%, between the noise proxy (0.053%) and the smallest real change (0.146%).
PIXEL_THRESHOLD = 48  # of 255: faint antialiasing changes don't count
MAX_FRACTION = 0.001  # 0.1% of the pixels (a 960x564 figure: 541 pixels)
TOLERANCE = (PIXEL_THRESHOLD, MAX_FRACTION)


@dataclass(frozen=True)
class Problem:
    file: str
    kind: str  # "missing" (made but not committed), "orphaned" (committed, nothing makes it), "differs"
    detail: str
    command: str

    def __str__(self) -> str:
        how = "command of its prefix" if self.kind == "orphaned" else "regenerate with"
        return f"{self.file}: {self.kind}: {self.detail}\n    {how}: {self.command}"


def _load(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.int16)


def image_difference(a: Path, b: Path, threshold: int = PIXEL_THRESHOLD) -> tuple[str, float] | None:
    """None if the two files are byte-identical, else (description, fraction of differing pixels;
    1.0 when the sizes differ or a file is not a readable image)."""
    if a.read_bytes() == b.read_bytes():
        return None
    try:
        x, y = _load(a), _load(b)
    except (OSError, ValueError) as exc:  # not an image (PIL.UnidentifiedImageError is an OSError)
        return f"contents differ ({exc.__class__.__name__} reading as an image)", 1.0
    if x.shape != y.shape:
        return f"size {x.shape[1]}x{x.shape[0]} committed, {y.shape[1]}x{y.shape[0]} regenerated", 1.0
    d = abs(x - y).max(axis=-1)
    n = int((d > threshold).sum())
    frac = n / d.size
    return (f"{100 * frac:.3f}% of pixels ({n} of {d.size}) differ by more than {threshold}/255 "
            f"(largest difference {int(d.max())}/255, {100 * (d > 0).mean():.3f}% differ at all)"), frac


def compare(committed_dir: str | os.PathLike, fresh_dir: str | os.PathLike,
            tol: tuple[int, float] = TOLERANCE) -> list[Problem]:
    """What is wrong with ``committed_dir`` given the regenerated ``fresh_dir``: every file
    regenerated but not committed, committed but not regenerated, or different beyond ``tol``
    = (pixel threshold 0-255, largest allowed fraction of differing pixels)."""
    threshold, max_fraction = tol
    committed_dir, fresh_dir = Path(committed_dir), Path(fresh_dir)

    def files(d: Path) -> set[str]:
        return {p.name for p in d.iterdir() if p.is_file() and not p.name.startswith(".")} if d.is_dir() else set()

    def command(name: str) -> str:
        g = group_of(name)
        return g.command() if g else "none (no group in scripts/figures.py has a prefix this name starts with)"

    old, new = files(committed_dir), files(fresh_dir)
    problems = []
    for name in sorted(old | new):
        if name not in old:
            problems.append(Problem(name, "missing", "regenerated but not in the committed folder; after the command "
                                    f"below, git add figures/{name}", command(name)))
        elif name not in new:
            g = group_of(name)
            why = (f"committed, but nothing makes it (the {g.name} command below does not write it)" if g and g.active()
                   else f"committed, but nothing makes it ({g.name} is skipped: {g.needs} is absent)" if g
                   else "committed, but nothing makes it")
            problems.append(Problem(name, "orphaned", why + "; delete it with: git rm figures/" + name,
                                    command(name)))
        else:
            diff = image_difference(committed_dir / name, fresh_dir / name, threshold)
            if diff and diff[1] > max_fraction:
                problems.append(Problem(name, "differs", f"{diff[0]}; tolerance {100 * max_fraction:g}%",
                                        command(name)))
    return problems


def _check(committed: Path, fresh: Path) -> int:
    problems = compare(committed, fresh)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) with {committed}" if problems else f"{committed} is current")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="regenerate into a temporary folder and compare with figures/")
    mode.add_argument("--write", action="store_true", help="regenerate into figures/")
    mode.add_argument("--list", action="store_true", help="print every group and its command")
    parser.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel for the notebooks (default {KERNEL})")
    parser.add_argument("--committed", type=Path, default=FIGURES, help="--check: the folder to check (default figures/)")
    parser.add_argument("--fresh", type=Path, default=None,
                        help="--check: compare with this already regenerated folder instead of regenerating")
    a = parser.parse_args(argv)
    if a.check and a.fresh:
        return _check(a.committed, a.fresh)
    if a.list:
        for g in GROUPS:
            print(f"{g.name}{'' if g.active() else f' (skipped: {g.needs} absent)'}\n    {g.command()}")
        return 0
    with tempfile.TemporaryDirectory(prefix="labkit_figures_") as tmp:
        fresh, executed = Path(tmp) / "figures", Path(tempfile.mkdtemp(prefix="labkit_executed_"))
        start = time.perf_counter()
        regenerate(fresh, kernel=a.kernel, executed_dir=executed, verbose=True)
        print(f"regenerated {len(list(fresh.iterdir()))} figures in {time.perf_counter() - start:.0f} s; "
              f"executed notebooks in {executed}")
        if a.check:
            return _check(a.committed, fresh)
        problems = compare(FIGURES, fresh)
        FIGURES.mkdir(exist_ok=True)
        changed = [p for p in sorted(fresh.iterdir())
                   if not (FIGURES / p.name).is_file() or (FIGURES / p.name).read_bytes() != p.read_bytes()]
        for p in changed:
            shutil.copyfile(p, FIGURES / p.name)
            print("wrote", (FIGURES / p.name).relative_to(ROOT))
        print(f"{len(changed)} figure(s) written, {len(list(fresh.iterdir())) - len(changed)} unchanged")
        orphans = [p for p in problems if p.kind == "orphaned"]
        for p in orphans:  # never deleted silently
            print(p)
        return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
