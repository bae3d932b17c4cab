"""The repository itself: packaging in step with conda, the README's commands, CI, layout."""
from __future__ import annotations

import ast
import re
import tomllib

import yaml
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            conda += [r for r in item["pip"] if not r.startswith("-e")]
        else:
            conda.append(item)
    conda_pkgs = {_name(r): r.replace(" ", "") for r in conda if _name(r) not in ("python", "pip")}
    py_pkgs = {_name(r): r.replace(" ", "") for r in deps}
    assert conda_pkgs == py_pkgs


def test_dependencies_use_lower_bounds_and_never_require_a_newer_torch_than_the_disk_has():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        assert "==" not in d and "<" not in d, f"use lower bounds only: {d}"
    torch_min = next(d for d in deps if _name(d) == "torch").split(">=")[1]
    assert tuple(int(x) for x in torch_min.split(".")) <= (2, 14, 1)


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    install, test = blocks[0].strip(), blocks[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert install + " || exit $?" in ci
    assert test in ci
    assert '"$rc" -eq 5' in ci  # pytest's "no tests collected"


def test_data_flows_one_way_through_the_library():
    """Lower modules never import the ones above them (data -> learner -> meta -> results -> plots)."""
    order = ["ops", "networks", "feedback", "rules", "metrics", "data", "learner", "stats", "results",
             "meta", "plots", "tutorial", "widgets", "cli"]
    rank = {m: i for i, m in enumerate(order)}
    for module in order:
        tree = ast.parse((ROOT / "labkit" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                dep = node.module.split(".")[0]
                if dep in rank:
                    assert rank[dep] < rank[module] or (module, dep) == ("meta", "results"), f"{module} imports {dep}"
                    assert not (module in ("results", "stats", "plots") and dep in ("meta", "learner", "cli"))
