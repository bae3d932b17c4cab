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
        spec = d.split(";")[0]  # an environment marker (python_version < '3.11') is not a bound
        assert "==" not in spec and "<" not in spec, f"use lower bounds only: {d}"
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


# The library's layers, low to high. A module may import only modules of strictly lower
# layers (so never one of its own layer, and no import loop can form), except that a module
# of a sub-package may import its own package's __init__ (``pathways.fa`` -> ``pathways``).
# A sub-package's modules are placed by the package's name (all of ``pathways.*`` with
# ``pathways``). ``__init__`` is the package root (labkit/__init__.py: the version only):
# anything may import it, and it imports nothing of labkit.
LAYERS: list[list[str]] = [
    ["__init__"],
    ["terms", "feedback_terms", "ops", "stats"],
    ["networks"],
    ["pathways"],
    ["feedback"],
    ["rules", "metrics", "data"],
    ["episode"],
    ["adjoint"],
    ["learner"],
    ["results"],
    ["optim", "guards", "workers"],
    ["meta"],
    ["runs", "evaluation"],
    ["sweep"],
    ["analysis", "tutorial"],
    ["plots"],
    ["widgets"],
    ["cli"],
]
# Above what the layers say: figures are drawn from result files alone, never by training.
NEVER_IMPORTS: dict[str, set[str]] = {"plots": {"meta", "learner", "cli"}}


def _layer_of(module: str, rank: dict[str, int]) -> int | None:
    """The layer of ``module``: its own entry, else that of its closest enclosing package."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if name in rank:
            return rank[name]
    return None


def check_layers(imports: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    """Problems of a module graph (``module -> modules it imports``, dotted names relative to
    the package) against ``layers`` (low to high): modules that no layer places, and imports
    of a module of the same or a higher layer. Empty if the graph is layered."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    problems = []
    for module in sorted(set(imports) | {d for deps in imports.values() for d in deps}):
        if _layer_of(module, rank) is None:
            problems.append(f"{module} is in no layer of the table: place it there")
    for module in sorted(imports):
        mine = _layer_of(module, rank)
        for dep in sorted(imports[module]):
            theirs = _layer_of(dep, rank)
            if mine is None or theirs is None or dep == module:
                continue
            if "." in module and dep == module.rsplit(".", 1)[0]:
                continue  # a sub-package's module may import its own package's __init__
            if theirs == mine:
                problems.append(f"{module} imports {dep}, of its own layer {layers[mine]}")
            elif theirs > mine:
                problems.append(f"{module} (layer {mine}: {layers[mine]}) imports {dep}, "
                                f"of the higher layer {theirs}: {layers[theirs]}")
    return problems


def library_modules(package: Path) -> dict[str, Path]:
    """Every module of the package, by dotted name relative to it (``ops``, ``pathways`` for
    pathways/__init__.py, ``pathways.fa``; the root's __init__.py is ``__init__``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def library_imports(package: Path, name: str = "labkit") -> dict[str, set[str]]:
    """``module -> the package's modules it imports``, read with ``ast`` from every .py file:
    relative and absolute imports, at module level or inside functions and ``if
    TYPE_CHECKING:`` blocks alike. ``from X import y`` depends on module X.y if that is a
    module, else on X; a target that is no module of the package is kept as it is named."""
    modules = library_modules(package)

    def resolve(target: list[str]) -> str:
        for k in range(len(target), 0, -1):
            if ".".join(target[:k]) in modules:
                return ".".join(target[:k])
        return ".".join(target) if target else "__init__"

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        here = [] if module == "__init__" else module.split(".")
        anchor = here if is_package else here[:-1]  # what "from . import" refers to
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    head, *rest = alias.name.split(".")
                    if head == name:
                        deps.add(resolve(rest))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level - 1 <= len(anchor), f"{path}: relative import beyond the package"
                    target = anchor[: len(anchor) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == name:
                    target = node.module.split(".")[1:]
                else:
                    continue
                for alias in node.names:
                    sub = ".".join(target + [alias.name])
                    deps.add(sub if sub in modules else resolve(target))
        deps.discard(module)
        graph[module] = deps
    return graph


def test_check_layers_passes_a_layered_graph():
    layers = [["ops"], ["pathways"], ["meta", "results"]]
    graph = {"ops": set(), "pathways": {"ops"}, "pathways.fa": {"pathways", "ops"},
             "meta": {"pathways.fa", "ops"}, "results": set()}
    assert check_layers(graph, layers) == []


def test_check_layers_names_an_import_from_a_higher_layer():
    layers = [["ops"], ["pathways"], ["meta"]]
    problems = check_layers({"ops": set(), "pathways": {"meta"}, "meta": {"ops"}}, layers)
    assert len(problems) == 1 and problems[0].startswith("pathways (layer 1") and "imports meta" in problems[0]
    problems = check_layers({"ops": set(), "pathways.fa": {"meta"}, "meta": set()}, layers)
    assert len(problems) == 1 and problems[0].startswith("pathways.fa ") and "imports meta" in problems[0]


def test_check_layers_names_both_imports_of_a_loop_within_a_layer():
    layers = [["ops"], ["rules", "metrics"]]
    problems = check_layers({"ops": set(), "rules": {"metrics", "ops"}, "metrics": {"rules"}}, layers)
    assert problems == ["metrics imports rules, of its own layer ['rules', 'metrics']",
                        "rules imports metrics, of its own layer ['rules', 'metrics']"]
    # a registry that imports the modules that import it is such a loop too
    problems = check_layers({"pathways": {"pathways.fa"}, "pathways.fa": {"pathways"}}, [["pathways"]])
    assert problems == ["pathways imports pathways.fa, of its own layer ['pathways']"]


def test_check_layers_names_a_module_of_no_layer():
    layers = [["ops"], ["meta"]]
    problems = check_layers({"ops": set(), "meta": {"ops", "helpers"}, "optim2": {"ops"}}, layers)
    assert problems == ["helpers is in no layer of the table: place it there",
                        "optim2 is in no layer of the table: place it there"]


def test_library_imports_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "labkit"
    (pkg / "pathways").mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0"\n')
    (pkg / "ops.py").write_text("import numpy\n")
    (pkg / "networks.py").write_text("from . import ops\nfrom . import __version__\n")
    (pkg / "pathways" / "__init__.py").write_text("from .. import networks\n")
    (pkg / "pathways" / "fa.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import REGISTRY\nfrom ..ops import x\n"
        "if TYPE_CHECKING:\n    from ..meta import MetaConfig\n"
        "def f():\n    import labkit.networks\n    from labkit.pathways import fa\n")
    (pkg / "meta.py").write_text("from .pathways.fa import f\nfrom labkit import ops\nfrom .pathways import fa\n")
    assert library_imports(pkg) == {
        "__init__": set(), "ops": set(), "networks": {"ops", "__init__"}, "pathways": {"networks"},
        "pathways.fa": {"pathways", "ops", "meta", "networks"}, "meta": {"pathways.fa", "ops"},
    }


def test_data_flows_one_way_through_the_library():
    """Every module of labkit sits in a layer and imports only lower layers (LAYERS)."""
    graph = library_imports(ROOT / "labkit")
    problems = check_layers(graph, LAYERS)
    for module, banned in NEVER_IMPORTS.items():
        problems += [f"{module} imports {dep}" for dep in sorted(graph.get(module, set()) & banned)]
    assert not problems, "the library's layering is broken:\n" + "\n".join(problems)
