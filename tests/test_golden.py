"""The library computes, bit for bit, the numbers that the code before the module-layout
refactor computed: seeded short meta-training runs (their history.csv) and evaluate_rule's
accuracies, recorded in tests/golden/ by tests/golden/record.py (which says from which commit
and how; re-record there after a deliberate change of the numbers).

history.csv holds no timing column, so every cell is compared, as the text the library
writes (floats as repr, which reads back to the identical float). To stay within about a
minute on 2 cores, each run is re-run for its first CHECKED_EPISODES episodes and compared
with the recorded rows of those episodes (a run's first episodes do not depend on its
length); LABKIT_GOLDEN_FULL=1 re-runs every record to its end (about 2-3 minutes)."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_record", GOLDEN / "record.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)

# Episodes re-run per record: past the 5 episodes of history the explosive-gradient guard
# needs before it acts, and for dfa past its recorded skip-explosive at episode 9.
CHECKED_EPISODES = {"pool_fa_2x20": 6, "bio_fa_2x20": 6, "fa_fa_2x20": 5, "bp_bp_2x20": 5,
                    "dfa_dfa_2x20": 10, "ehebb_bp_2x10": 5}
FULL = os.environ.get("LABKIT_GOLDEN_FULL", "") not in ("", "0")


@pytest.fixture(autouse=True)
def recorded_threads():
    """The thread count the records were made with (another test may have changed it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(record.THREADS)
    yield
    torch.set_num_threads(before)


def first_difference(recorded: str, now: str) -> str | None:
    """Where two history.csv texts first differ (row, trial, episode, column, both cells), or None."""
    old, new = list(csv.reader(recorded.splitlines())), list(csv.reader(now.splitlines()))
    if not old or not new or old[0] != new[0]:
        return f"the columns differ:\nrecorded {old[0] if old else []}\nnow      {new[0] if new else []}"
    header = old[0]
    for n, (a, b) in enumerate(zip(old[1:], new[1:]), start=1):
        for column, x, y in zip(header, a, b):
            if x != y:
                return (f"row {n} (trial {a[0]}, episode {a[1]}), column {column}: "
                        f"recorded {x!r}, now {y!r}")
        if len(a) != len(b):
            return f"row {n} has {len(a)} cells recorded, {len(b)} now"
    if len(old) != len(new):
        return f"{len(old) - 1} rows recorded, {len(new) - 1} now"
    if recorded != now:
        return "the cells agree but the text differs (quoting or line endings)"
    return None


def first_episodes(history: str, episodes: int) -> str:
    """The header and the rows of episodes 1..``episodes`` of a history.csv text, verbatim."""
    lines = history.splitlines(keepends=True)
    column = next(csv.reader(lines[:1])).index("episode")
    return lines[0] + "".join(line for line in lines[1:] if int(next(csv.reader([line]))[column]) <= episodes)


def test_first_difference_names_the_row_and_column_of_a_changed_float():
    recorded = "trial,episode,meta_loss,guarded\n0,1,2.25,\n1,1,2.5,\n"
    assert first_difference(recorded, recorded) is None
    assert first_difference(recorded, recorded.replace("2.5,", "2.5000000000000004,")) == (
        "row 2 (trial 1, episode 1), column meta_loss: recorded '2.5', now '2.5000000000000004'")
    assert first_difference(recorded, recorded + "0,2,2.0,\n") == "2 rows recorded, 3 now"
    assert first_difference(recorded, recorded.replace(",guarded", ",guarded,seconds")).startswith("the columns differ")
    assert first_episodes(recorded + "0,2,2.0,\n1,2,1.5,\n", 1) == recorded


@pytest.mark.parametrize("name", list(record.RUNS))
def test_meta_training_history_is_the_recorded_one_bit_for_bit(name, tmp_path):
    config = record.RUNS[name]
    episodes = config["episodes"] if FULL else min(CHECKED_EPISODES[name], config["episodes"])
    recorded = first_episodes((GOLDEN / f"{name}.csv").read_text(), episodes)
    assert recorded.count("\n") == 1 + config["trials"] * episodes  # the record holds these episodes
    now = record.run_history(name, tmp_path / name, episodes)
    difference = first_difference(recorded, now)
    assert difference is None, (f"{name} ({config}, {episodes} episodes) no longer reproduces "
                                f"tests/golden/{name}.csv: first difference at {difference}")


def test_evaluate_rule_gives_the_recorded_accuracies_exactly():
    from labkit.evaluation import evaluate_rule  # here, so that its absence fails this test alone

    recorded = json.loads((GOLDEN / record.EVALUATION_FILE).read_text())
    assert sorted(recorded) == sorted(record.EVALUATIONS)
    for feedback, kw in record.EVALUATIONS.items():
        now = [float(a) for a in evaluate_rule(**kw)]
        assert len(now) == len(recorded[feedback]) == kw["tasks"]
        for task, (x, y) in enumerate(zip(recorded[feedback], now)):
            assert x == y, f"evaluate_rule with feedback {feedback}, task {task}: recorded {x!r}, now {y!r}"
