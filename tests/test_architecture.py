"""The code reads as its architecture (README "Architecture"): small classes and functions, no import
cycle between the package's modules, no module using another's private names. Read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "dogetickets"
MAX_CLASS = 300
MAX_FUNCTION = 80
LONG_ON_PURPOSE = {"training/loop.py:train"}  # the training loop reads top to bottom (run_glue_no_trainer)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined, operator]


def test_no_class_or_function_is_too_long_to_read():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and _length(node) > MAX_CLASS:
                too_long.append(f"{rel}:{node.name} (class, {_length(node)} lines)")
            if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _length(node) > MAX_FUNCTION
                    and f"{rel}:{node.name}" not in LONG_ON_PURPOSE):
                too_long.append(f"{rel}:{node.name} ({_length(node)} lines)")
    assert not too_long, too_long


def _imports(tree: ast.Module, modules: dict[str, ast.Module]) -> set[str]:
    """The package modules a module imports, at module level or inside functions (`from a import b` of a
    module b imports a.b; of a name in a, imports a)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dogetickets")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dogetickets"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return out


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {i for i in _imports(t, modules) if i in modules and i != m} for m, t in modules.items()}
    # a package's __init__ is not an edge back to its parent: importing dogetickets.run.x runs dogetickets.run
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.extend([*path[path.index(n):], n] if n in path else [m, n])
                return True
            if n not in state and visit(n, [*path, n]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    used = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dogetickets"):
                used += [f"{name} imports {node.module}.{a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__") and node.module != name]
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls")
                    and f"{_package(name)}.{node.value.id}" in modules | {f"dogetickets.{node.value.id}": 0}):
                used.append(f"{name} uses {node.value.id}.{node.attr}")
    assert not used, used


def _package(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def test_the_architecture_section_lists_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    missing = [p.relative_to(SRC).as_posix() for p in sorted(SRC.rglob("*.py"))
               if p.name != "__init__.py" and p.relative_to(SRC).as_posix() not in section
               and p.name not in section]
    assert not missing, missing


def test_path_of_each_module_is_a_file():  # (keeps _modules honest)
    assert all(isinstance(t, ast.Module) for t in _modules().values()) and "dogetickets.run.sweep" in _modules()
    assert Path(SRC / "run" / "sweep.py").is_file()
