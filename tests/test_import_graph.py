"""Dependencies inside ``jepa`` go one way: no import cycle, deferred imports included.

The static check reads every ``import`` statement of every module under ``jepa/`` (module-level and
in-function; relative ones resolved; ``from pkg import name`` counts as importing ``pkg.name`` when
that is a module) and looks for strongly connected components. Importing ``a.b.c`` also runs the
``__init__`` of ``a.b`` and ``a``, so those count too, except the importer's own enclosing packages
(already being imported when it runs). Imports under ``if TYPE_CHECKING:`` never run and are left
out: annotations may name a type from a layer above.

The dynamic check imports every module on its own, in a seeded random order (printed), so that a
module that only imports when something else was loaded first shows up.
"""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jepa"

#: Deferred imports allowed to close a cycle (importer, imported): a heavy optional dependency kept
#: off a path where the module-level import would loop. None needed today; keep it that way.
ALLOWED_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()

SEED = int(os.environ.get("JEPA_IMPORT_SEED", "20250"))


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (path, is a package) for every module under ``jepa/``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """``name``, or the nearest enclosing module that exists (``jepa.data.Batch`` -> ``jepa.data``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """The ``jepa`` modules one import statement names."""
    if isinstance(node, ast.Import):
        return {m for alias in node.names if (m := _known(alias.name)) and m.startswith("jepa")}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    if base != "jepa" and not base.startswith("jepa."):
        return set()
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else _known(base) for alias in node.names} - {None}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, deferred)`` for every import of ``module`` that runs, with the
    enclosing packages that importing runs (those enclosing ``module`` itself left out, unless the
    import names them: ``from jepa.data import Batch`` inside ``jepa.data.x`` needs its ``__init__``)."""
    path, is_package = MODULES[module]
    found = []

    def walk(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for other in child.orelse:
                    walk(ast.Module(body=[other], type_ignores=[]), deferred)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, is_package):
                    parts = target.split(".")
                    named = [".".join(parts[:i]) for i in range(1, len(parts))
                             if not module.startswith(".".join(parts[:i]) + ".")]
                    found.extend((name, child.lineno, deferred) for name in [*named, target] if name != module)
            walk(child, deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def import_graph() -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """importer -> imported -> [(line, deferred), ...] over every ``jepa`` module."""
    graph: dict[str, dict[str, list[tuple[int, bool]]]] = {m: {} for m in MODULES}
    for module in MODULES:
        for target, line, deferred in _imports(module):
            if (module, target) not in ALLOWED_CYCLE_EDGES:
                graph[module].setdefault(target, []).append((line, deferred))
    return graph


def strongly_connected(graph: dict[str, dict[str, object]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(component: list[str], graph: dict[str, dict[str, list[tuple[int, bool]]]]) -> str:
    members = set(component)
    lines = [f"cycle of {len(component)} modules: {', '.join(component)}"]
    for a in component:
        for b, where in sorted(graph[a].items()):
            if b in members:
                spots = ", ".join(f"{MODULES[a][0].relative_to(ROOT)}:{line}{' (in a function)' if d else ''}"
                                  for line, d in where)
                lines.append(f"  {a} -> {b}   {spots}")
    return "\n".join(lines)


def test_the_graph_sees_module_level_deferred_and_package_imports():
    graph = import_graph()
    assert len(MODULES) > 100
    assert "jepa.data.stream" in graph["jepa.data.loader"]  # module level
    assert any(d for _, d in graph["jepa.cli.train_cmds"]["jepa.train"])  # in a function
    assert "jepa.data" in graph["jepa.objectives.ijepa"]  # the package a submodule import runs
    assert "jepa.recipe" not in graph["jepa.recipe.schema"]  # not the importer's own package
    assert "jepa.cli" in graph["jepa.cli.__main__"]  # unless it is named (from jepa.cli import main)
    assert "jepa.engine" not in graph["jepa.monitor"]  # under TYPE_CHECKING
    assert strongly_connected({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "imports must go one way; cut the cycle at its root (a leaf module, a value handed in):\n" + \
        "\n\n".join(_describe(c, graph) for c in cycles)


def test_no_in_function_import_repeats_a_module_level_one():
    repeats = []
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {t for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               for t in _targets(node, module, is_package)}
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(node, module, is_package) & top:
                        repeats.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not repeats, "already imported at module level; import the name there:\n" + "\n".join(sorted(set(repeats)))


#: Files exempt from the ``# deferred:`` rule (none: add one only with the reason beside it).
DEFERRED_UNCHECKED: frozenset[str] = frozenset()


def _in_function_imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, ast.stmt]]:
    """``(import, first import of its group)`` for every import inside a function; a group is a run of
    import statements on consecutive lines of one block."""
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, field, None)
                if not isinstance(block, list):
                    continue
                first = None
                for i, stmt in enumerate(block):
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        first = None
                        continue
                    if first is None or block[i - 1].end_lineno != stmt.lineno - 1:
                        first = stmt
                    found.append((stmt, first))
    return list({id(node): (node, first) for node, first in found}.values())


def test_every_in_function_import_says_why_it_is_deferred():
    """An import inside a function keeps a heavy or optional dependency off a path that does not need it
    (or cuts a cycle), and says which with a ``# deferred:`` comment on its line, the line before, or the
    first line of its group (or the line before that); every other import belongs at the module's top."""
    missing = []
    for path, _ in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        if rel in DEFERRED_UNCHECKED:
            continue
        lines = path.read_text().splitlines()
        for node, first in _in_function_imports(ast.parse("\n".join(lines), filename=str(path))):
            spots = {*range(node.lineno, node.end_lineno + 1), node.lineno - 1, first.lineno, first.lineno - 1}
            if not any("# deferred:" in lines[i - 1] for i in spots if i >= 1):
                missing.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not missing, ("move these imports to the top of the module, or say what deferring them keeps off which "
                         "path (`# deferred: PyAV, only when a video is decoded`):\n" + "\n".join(missing))


def test_the_deferred_check_sees_groups_and_nested_blocks():
    tree = ast.parse("def f():\n    import a\n    import b\n\n    import c\n    if x:\n        import d\n")
    groups = {node.names[0].name: first.names[0].name for node, first in _in_function_imports(tree)}
    assert groups == {"a": "a", "b": "a", "c": "c", "d": "d"}
    assert all((ROOT / rel).exists() for rel in DEFERRED_UNCHECKED), "drop files that are gone from DEFERRED_UNCHECKED"


IMPORTABLE = sorted(m for m in MODULES if not m.endswith(".__main__"))

_ALONE = """
import sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "jepa" or m.startswith("jepa.")]:
        del sys.modules[loaded]
    try:
        __import__(name)
    except BaseException as exc:
        print(f"FAILED {name}: {type(exc).__name__}: {exc}")
        raise
"""


def _shuffled(seed: int) -> list[str]:
    order = list(IMPORTABLE)
    random.Random(seed).shuffle(order)
    return order


def _run(code: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("chunk", range(4))
def test_every_module_imports_alone(chunk):
    """Each module imported with no ``jepa`` module loaded before it (they are dropped from
    ``sys.modules`` in between; third-party packages stay loaded, which keeps this quick)."""
    order = _shuffled(SEED)[chunk::4]
    print(f"seed {SEED} (JEPA_IMPORT_SEED), chunk {chunk}: {' '.join(order)}")
    done = _run(_ALONE, order, timeout=300)
    assert done.returncode == 0, f"seed {SEED}, order {order}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    """The exhaustive variant: one new interpreter per module, nothing loaded before it."""
    order = _shuffled(SEED)
    print(f"seed {SEED} (JEPA_IMPORT_SEED): {' '.join(order)}")
    failed = []
    for name in order:
        done = _run(f"import {name}", [], timeout=300)
        if done.returncode:
            failed.append(f"{name}:\n{done.stderr[-1500:]}")
    assert not failed, f"seed {SEED}:\n" + "\n\n".join(failed)
