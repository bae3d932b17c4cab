"""The labkit command: a short discover run, evaluate, figures, and clear errors."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from labkit import pathways
from labkit.cli import NOT_ON_THE_COMMAND_LINE, RENAMED, auto_workers, build_parser, config_from_args, main
from labkit.feedback import FEEDBACK_KINDS
from labkit.meta import MetaConfig
from labkit.results import history_columns, read_config, read_history, read_theta
from labkit.terms import TERMS

SMALL = ["--hidden", "16", "--M", "3", "--K", "3", "--Q", "2", "--trials", "2", "--quiet"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_short_discover_run_writes_files_that_parse_with_the_documented_columns(tmp_path, capsys):
    code, out, _ = run(capsys, "discover", *SMALL, "--episodes", "3", "--out", str(tmp_path))
    assert code == 0, out
    assert "meta-accuracy" in out and "surviving terms" in out
    h = read_history(tmp_path)
    assert list(h.columns) == history_columns(2) and len(h) == 6
    cfg = read_config(tmp_path)
    assert cfg["rule"] == "pool" and cfg["feedback"] == "fa" and cfg["seed"] == 0
    assert cfg["sizes"] == [784, 16, 10] and "torch" in cfg["versions"]
    th = read_theta(tmp_path)
    assert th["terms"] == list(range(10)) and len(th["per_trial"]) == 2


def test_discover_takes_one_term_list_per_layer_as_table_1_needs(tmp_path, capsys):
    code, out, _ = run(capsys, "discover", "--hidden", "16,8", "--M", "3", "--K", "3", "--Q", "2", "--trials", "2",
                       "--quiet", "--rule", "0/0,2/0", "--episodes", "2", "--out", str(tmp_path))
    assert code == 0, out
    cfg = read_config(tmp_path)
    assert cfg["layer_terms"] == [[0], [0, 2], [0]] and cfg["terms"] == [0, 2]
    th = read_theta(tmp_path)
    assert th["terms"] == [0, 2] and all(len(t) == 2 for t in th["per_trial"])  # one theta per term, shared by layers
    code, out, _ = run(capsys, "discover", "--hidden", "16,8", "--rule", "0/0,2", "--out", str(tmp_path / "bad"))
    assert code != 0 and "2 entries but the network has 3" in out + _


def test_evaluate_reads_a_results_folder_and_a_rule_given_on_the_command_line(tmp_path, capsys):
    run(capsys, "discover", *SMALL, "--rule", "bio", "--episodes", "2", "--out", str(tmp_path / "bio"))
    code, out, _ = run(capsys, "evaluate", "--hidden", "16", "--M", "3", "--K", "3", "--Q", "2", "--tasks", "4",
                       "--results", str(tmp_path / "bio"), "--rule", "bp", "--theta", "0.01",
                       "--json", str(tmp_path / "eval.json"))
    assert code == 0
    assert "bio" in out and "bp" in out and "98% CI" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report) == {"bio", "bp"} and all(v["tasks"] == 4 for v in report.values())


def test_figures_are_regenerated_from_results_folders(tmp_path, capsys):
    run(capsys, "discover", *SMALL, "--rule", "fa", "--episodes", "3", "--out", str(tmp_path / "fa"))
    code, out, _ = run(capsys, "figures", str(tmp_path / "fa"), "--out", str(tmp_path / "figs"))
    assert code == 0
    pngs = list((tmp_path / "figs").glob("*.png"))
    assert len(pngs) >= 4 and all(p.stat().st_size > 1000 for p in pngs)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["discover", "--M", "12"], "choose M <= 10"),
        (["discover", "--K", "190"], "choose K\\+Q <= "),
        (["discover", "--rule", "0,12"], "terms are numbered 0..9"),
        (["discover", "--rule", "hebbian"], "unknown rule"),
        (["discover", "--episodes", "0"], "episodes must be >= 1"),
        (["discover", "--lam", "-1"], "lambda .* must be >= 0"),
        (["discover", "--rollback-explosive", "11"], "among the last 10: 0 \\(never\\) to 10"),
        (["discover", "--dataset", "emnist", "--data-root", "/nonexistent"], "emnist-balanced-train-images-idx3-ubyte"),
        (["evaluate", "--rule", "bp"], "needs a --theta"),
        (["evaluate", "--rule", "bio", "--theta", "0.1,0.2"], "needs 3 numbers"),
        (["evaluate"], "nothing to evaluate"),
    ],
)
def test_invalid_input_fails_before_any_work_with_a_message_that_says_what_is_allowed(tmp_path, capsys, argv, message):
    if argv[0] == "discover":
        argv = argv + ["--out", str(tmp_path / "run"), "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "history.csv").exists()


def test_argument_type_errors_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--feedback", "magic"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["discover", "evaluate"])
def test_an_unknown_feedback_pathway_is_a_one_line_error_that_names_the_registered_ones(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--feedback", "xyz"])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"labkit {command}: error: argument --feedback: invalid choice: 'xyz'")
    assert all(name in lines[0] for name in FEEDBACK_KINDS) and f"labkit {command} --help" in lines[0]


def test_discover_help_lists_every_registered_pathway_with_its_label_and_every_term(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for name in ("bp", "fa", "dfa", "usf", "frsf", "drtp"):
        assert name in FEEDBACK_KINDS
        assert f"{name} ({pathways.get(name).label})" in text, name
    assert all(f"{t.index} {t.name}" in text for t in TERMS)


def test_discover_builds_its_config_from_metaconfigs_fields_by_name():
    parser = build_parser()
    dests = set(vars(parser.parse_args(["discover"])))
    fields = {f.name for f in dataclasses.fields(MetaConfig)}
    missing = fields - dests - set(RENAMED) - NOT_ON_THE_COMMAND_LINE
    assert not missing, f"MetaConfig fields without a flag: {missing}"
    # no flag: MetaConfig's defaults, but for the short run of the main job, on a worker per core
    assert config_from_args(parser.parse_args(["discover"])) == MetaConfig(trials=4, episodes=200,
                                                                           workers=auto_workers(4, 200))
    assert auto_workers(4, 200) == 1 and auto_workers(4, 20) == 1  # one chunk of 4 trials: one part
    assert auto_workers(20, 600) == min(5, len(os.sched_getaffinity(0)))
    a = parser.parse_args(["discover", "--terms", "0,2", "--meta-lr", "1e-4", "--no-term-scaling", "--clip", "off",
                           "--feedback", "drtp", "--hidden", "32,16", "--lambda", "0.5", "--rollback-explosive", "2",
                           "--workers", "1"])
    assert config_from_args(a) == MetaConfig(rule="0,2", meta_lr=1e-4, term_scaling=False, clip=None, feedback="drtp",
                                             hidden=(32, 16), lam=0.5, rollback_explosive=2, trials=4, episodes=200)


def test_every_registered_pathway_runs_from_the_command_line(tmp_path, capsys):
    code, out, err = run(capsys, "discover", *SMALL, "--rule", "fa", "--feedback", "usf", "--episodes", "1",
                         "--out", str(tmp_path / "usf"))
    assert code == 0, err
    assert read_config(tmp_path / "usf")["feedback"] == "usf"
    pairs = [x for fb in FEEDBACK_KINDS for x in ("--rule", "fa", "--theta", "0.01", "--feedback", fb)]
    code, out, err = run(capsys, "evaluate", "--hidden", "16", "--M", "3", "--K", "3", "--Q", "2", "--tasks", "2",
                         *pairs)
    assert code == 0, err
    assert all(f"fa/{fb}" in out for fb in FEEDBACK_KINDS)


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    run(capsys, "discover", *SMALL, "--rule", "fa", "--episodes", "1", "--out", str(tmp_path))
    code, _, err = run(capsys, "discover", *SMALL, "--rule", "fa", "--episodes", "1", "--out", str(tmp_path))
    assert code == 2 and "--resume" in err
