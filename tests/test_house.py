"""The house rules of the package, read from the source (every import, deferred ones included):
layers import downwards only, no import loops, no private names across modules, a top level of entry
points and foundations only, and no module over 400 lines."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moe_lab"
# Lowest first: a module may import its own layer and the layers below, never one above.
LAYERS = (
    ("errors", "formatting", "checks", "redact", "signals"),
    ("artifacts", "study", "model", "data", "cli"),
    ("config",),
    ("callbacks", "interop", "parallel", "traces"),
    ("training",),
    ("sweep",),
    ("report",),
)
# Entry points (`python -m ...`): they wire the layers together and may import any of them.
ENTRY_POINTS = {
    "moe_lab.train",
    "moe_lab.ablate",
    "moe_lab.bench",
    "moe_lab.inspect",
    "moe_lab.sweep.__main__",
    "moe_lab.report.__main__",
    "moe_lab.interop.hf",
}
TOP_LEVEL = {
    "__init__.py",
    "errors.py",
    "signals.py",
    "formatting.py",
    "checks.py",
    "redact.py",
    "cli.py",
    "train.py",
    "ablate.py",
    "bench.py",
    "inspect.py",
}
TOP_LEVEL_PACKAGES = {
    "config",
    "artifacts",
    "study",
    "model",
    "data",
    "callbacks",
    "interop",
    "parallel",
    "traces",
    "training",
    "sweep",
    "report",
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> dict[str, list[str]]:
    """moe_lab modules `name` imports -> the names it takes from each."""
    found = defaultdict(list)
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moe_lab"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:  # `from moe_lab.x import y` where y is a module
                    found[sub].append("*")
                else:
                    found[node.module].append(alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("moe_lab"):
                    found[alias.name].append("*")
    return {target: names for target, names in found.items() if target in MODULES and target != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> int:
    part = name.split(".")[1] if "." in name else "moe_lab"
    part = part.removesuffix(".py")
    for index, members in enumerate(LAYERS):
        if part in members:
            return index
    raise AssertionError(f"{name} belongs to no layer: add its package to LAYERS or ENTRY_POINTS")


def test_the_source_was_found():
    assert len(MODULES) > 50 and "moe_lab.model.moe" in MODULES


def test_imports_go_downwards_only():
    upward = [
        f"{a} -> {b}"
        for a in GRAPH
        if a not in ENTRY_POINTS and a != "moe_lab"
        for b in GRAPH[a]
        if b not in ENTRY_POINTS and b != "moe_lab" and layer_of(b) > layer_of(a)
    ]
    assert not upward, upward


def test_no_import_loops():
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(name: str, path: list[str]):
        state[name] = 1
        for target in GRAPH[name]:
            if state.get(target) == 1:
                pytest.fail("import loop: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_no_private_names_across_modules():
    private = [
        f"{a} imports {b}.{n}"
        for a, targets in GRAPH.items()
        for b, names in targets.items()
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not private, private


def test_top_level_holds_entry_points_and_foundations_only():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, loose
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == TOP_LEVEL_PACKAGES, packages ^ TOP_LEVEL_PACKAGES


def test_no_module_over_the_limit():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_reports_never_import_the_sweep_machinery():
    """What both read about a study (storage, trial labels, number formats) lives below both, in study/
    and formatting; a report module importing moe_lab.sweep would tie the two rooms together again."""
    tied = [
        f"{a} -> {b}"
        for a in GRAPH
        if a.startswith("moe_lab.report")
        for b in GRAPH[a]
        if b.startswith("moe_lab.sweep")
    ]
    assert not tied, tied
