"""The package's shape: floors you can see and imports that only point down.

- the import graph of ponder/ has no cycle, between modules or between packages (a module belongs
  to the package of its folder);
- every import points to the same floor or one below it (`FLOORS`, bottom first);
- a task wing imports no other wing (only `ponder.tasks.common`);
- at most 8 modules sit loose at the top of ponder/, and every package's `__init__` says what
  lives there;
- imports sit at the top of modules (inside a function only for an optional heavy dependency,
  listed here)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ponder"
LAZY_OK = {"matplotlib", "matplotlib.pyplot"}  # plotting: imported only when a picture is drawn
# bottom first; a module may import its own floor and the floors below it
FLOORS = ("core", "models", "estimators", "dynamics", "training", "health", "tasks", "runs", "reports", "presets",
          "experiments", "face")
FACE = {"ponder", "ponder.cli", "ponder.__main__"}  # the public face: re-exports and the `ponder` verbs
MAX_LOOSE = 8


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module -> ponder modules it imports, anywhere in the file), and every import made inside a
    function as (module, function, imported name)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    inner: list[tuple[str, str, str]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                r = _resolve(t, modules) if t.startswith("ponder") else None
                if r and r != name:
                    graph[name].add(r)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        inner.append((name, fn.name, node.module or ""))
                    elif isinstance(node, ast.Import):
                        inner += [(name, fn.name, a.name) for a in node.names]
    return graph, inner


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 30 and graph["ponder.cli"]  # the walk saw the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_inside_functions_only_for_optional_heavy_dependencies():
    _, inner = import_graph()
    assert [i for i in inner if i[2] not in LAZY_OK] == []


def floor_of(module: str) -> str:
    """The floor of a module of ponder: its top-level package (or loose module) under ponder/."""
    return "face" if module in FACE else module.split(".")[1]


def package_of(module: str, modules: dict[str, Path]) -> str:
    """The package a module lives in: its folder (a package's __init__ is the package itself)."""
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    modules = _modules()
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        a = package_of(m, modules)
        out.setdefault(a, set())
        for t in targets:
            b = package_of(t, modules)
            if b != a:
                out[a].add(b)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in graph.items() for t in ts
                  if FLOORS.index(floor_of(t)) > FLOORS.index(floor_of(m)))


def test_every_module_is_on_a_floor():
    graph, _ = import_graph()
    assert sorted({floor_of(m) for m in graph} - set(FLOORS)) == []


def test_imports_only_point_down():
    graph, _ = import_graph()
    assert upward_imports(graph) == []


def test_no_package_imports_a_package_that_imports_it_back():
    assert cycles(package_graph(import_graph()[0])) == []


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"ponder.core.errors": {"ponder.runs.run"}, "ponder.runs.run": {"ponder.core.errors"}}) \
        == [("ponder.core.errors", "ponder.runs.run")]


def test_task_wings_import_no_other_wing():
    graph, _ = import_graph()

    def wing(m: str) -> str | None:
        parts = m.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "tasks" and parts[2] != "common" else None
    crossing = sorted((m, t) for m, ts in graph.items() for t in ts if wing(m) and wing(t) and wing(m) != wing(t))
    assert crossing == []


def test_few_loose_modules_and_every_package_says_what_lives_there():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_LOOSE, loose
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(PACKAGE.parent)} has no docstring"
