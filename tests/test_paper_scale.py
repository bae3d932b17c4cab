"""The paper-scale set (scripts/paper_scale.py, results/paper/): what it runs, and that every
committed folder of it comes from one clean commit at 20 trials x 600 episodes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from labkit.results import term_survival
from labkit.rules import make_rule

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"


def _script():
    spec = importlib.util.spec_from_file_location("paper_scale", ROOT / "scripts" / "paper_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_set_covers_every_rule_and_pathway_at_20_trials_x_600_episodes():
    ps = _script()
    assert (ps.TRIALS, ps.EPISODES) == (20, 600)
    rules = {name: args[args.index("--rule") + 1] for name, args in ps.RUNS.items() if "--rule" in args}
    for name, rule in {"fa_lr": "fa", "bp_lr": "bp", "dfa_lr": "dfa", "ehebb": "ehebb", "oja": "oja",
                       "bio": "bio", "pool": "pool"}.items():
        assert rules[name] == rule
    for fb in ("usf", "frsf", "drtp"):
        assert ps.RUNS[f"{fb}_lr"][-1] == fb and ps.RUNS[f"{fb}_bio"][-1] == fb
    assert "pool_refit" in ps.RUNS and ps.RUNS["pool"][-4:] == ps.POOL_L1


def test_table_1_gives_ehebb_to_each_of_the_8_subsets_of_the_3_weight_layers():
    ps = _script()
    table1 = {n: a for n, a in ps.RUNS.items() if n.startswith("table1_")}
    assert len(table1) == 8
    seen = set()
    for name, args in table1.items():
        assert args[args.index("--hidden") + 1] == "130,70"
        rule = make_rule(args[args.index("--rule") + 1], 3)
        with_ehebb = tuple(l + 1 for l, ts in enumerate(rule.layer_terms) if 2 in ts)
        assert all(ts in ((0,), (0, 2)) for ts in rule.layer_terms)
        assert name == "table1_" + ("-".join(map(str, with_ehebb)) or "none")
        seen.add(with_ehebb)
    assert len(seen) == 8


def _paper_configs() -> dict[str, dict]:
    """The finished folders: a run still being made here has a checkpoint, which is never committed."""
    return {cfg.parent.name: json.loads(cfg.read_text()) for cfg in sorted(PAPER.glob("*/config.json"))
            if not (cfg.parent / "checkpoint.pt").exists() and not (cfg.parent / "parts").exists()}


def test_every_paper_scale_folder_records_one_clean_commit_its_command_and_the_protocol():
    configs = _paper_configs()
    if not configs:
        pytest.skip("no paper-scale run is committed yet (scripts/paper_scale.py makes them)")
    ps = _script()
    commits = {c["versions"]["git_commit"] for c in configs.values()}
    assert len(commits) == 1 and None not in commits, commits
    for name, cfg in configs.items():
        assert name in ps.RUNS, f"results/paper/{name} is not a run of scripts/paper_scale.py"
        assert cfg["versions"]["git_dirty"] is False, name
        assert (cfg["trials"], cfg["episodes"], cfg["seed"]) == (20, 600, 0), name
        assert cfg["command"].startswith("labkit discover ") and f"--out results/paper/{name}" in cfg["command"]
        assert (PAPER / name / "theta.json").is_file() and (PAPER / name / "history.csv").is_file()


@pytest.mark.parametrize("page", ["results/README.md", "docs/reproduction.md"])
def test_each_page_lists_every_finished_paper_scale_run_as_the_script_prints_it(page, capsys):
    ps = _script()
    text = (ROOT / page).read_text()
    start = text.index("<!-- paper-table: scripts/paper_scale.py --table -->\n")
    listed = text[text.index("\n", start) + 1:text.index("<!-- /paper-table -->")]
    ps.print_table(list(ps.RUNS))
    printed = capsys.readouterr().out
    assert listed == printed, f"{page}'s paper-scale table is stale: paste `scripts/paper_scale.py --table`"
    for name in _paper_configs():
        assert f"| {name} |" in listed, f"results/paper/{name} is committed but not listed in {page}"


def test_the_set_is_complete_every_run_of_the_script_is_committed():
    assert set(_paper_configs()) == set(_script().RUNS)


def test_the_refit_meta_learns_exactly_the_terms_the_pool_kept_in_at_least_80_percent_of_its_trials():
    configs = _paper_configs()
    if not {"pool", "pool_refit"} <= set(configs):
        pytest.skip("pool and pool_refit are not both committed")
    selected = term_survival(PAPER / "pool", keep=_script().KEEP)["selected"]
    assert configs["pool_refit"]["terms"] == selected
    assert configs["pool_refit"]["lam"] == 0.0 and configs["pool"]["lam"] == 0.1
