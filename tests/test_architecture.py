"""The import graph: no cycles, no module imports a layer above its own (docs/style.md: folders
follow the data's way through the system), and no module imports another package's private
(``_name``) module: each package exports what others need from its ``__init__``. Every import
counts, at module level or inside a function, so a lazy import cannot hide a cycle. And no source
file is over MAX_LINES lines."""

from __future__ import annotations

import ast
from pathlib import Path

import leanml

SRC = Path(leanml.__file__).resolve().parent

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    {"_utils", "_text", "errors", "_version", "charts", "constraints"},
    {"metrics", "data"},
    {"models"},
    {"task", "training"},
    {"runtime"},
    {"measure", "export"},
    # Optuna studies and the plan search: the tune stage runs its study with it, so it sits below
    # the techniques, and knows no stage (the pipeline hands the search the plans' stages).
    {"search"},
    {"techniques"},
    {"report"},
    {"pipeline"},
    {"cli", "demo", "__init__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """leanml module -> the leanml modules it imports (``from pkg import mod`` names ``pkg.mod``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("leanml")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("leanml"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    assert _cycles(import_graph()) == []


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    unknown = sorted({_layer(m) for m in graph} - set(RANK))
    assert not unknown, f"give these top-level modules a layer in LAYERS: {unknown}"
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if RANK[_layer(b)] > RANK[_layer(a)]
    )
    assert upward == []


def _owner(module: str) -> str | None:
    """The package whose private module ``module`` is (``leanml.pipeline._tasks`` belongs to
    ``leanml.pipeline``), or None for a public module."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and part != "__init__":
            return ".".join(parts[:i])
    return None


def private_imports(graph: dict[str, set[str]], packages: set[str]) -> list[str]:
    """``importer -> module`` for each import of a private module from outside the package that
    owns it: a module may import the private modules of its own package (and of the packages
    around it: ``techniques/prune/_stage.py`` imports ``techniques/_base.py``), never those of a
    sibling or of a subpackage (``techniques/__init__`` imports ``techniques.tune``, not
    ``techniques.tune._stage``)."""
    out = []
    for importer, targets in graph.items():
        here = importer if importer in packages else importer.rsplit(".", 1)[0]
        for target in targets:
            owner = _owner(target)
            if owner is not None and here != owner and not here.startswith(owner + "."):
                out.append(f"{importer} -> {target}")
    return sorted(out)


def _packages() -> set[str]:
    return {_module_name(p) for p in SRC.rglob("__init__.py")}


def test_no_module_imports_another_packages_private_module():
    assert private_imports(import_graph(), _packages()) == []


def test_the_privacy_rule_finds_a_planted_violation():
    graph = {
        "leanml.cli._run": {"leanml.pipeline._tasks", "leanml.pipeline", "leanml.cli._app"},
        "leanml.techniques.prune._stage": {"leanml.techniques._base"},
        "leanml.techniques": {"leanml.techniques.tune._stage", "leanml.techniques._base"},
        "leanml.pipeline._optimize": {"leanml.techniques.tune._sharing"},
    }
    packages = {"leanml.cli", "leanml.pipeline", "leanml.techniques", "leanml.techniques.prune"}
    assert private_imports(graph, packages) == [
        "leanml.cli._run -> leanml.pipeline._tasks",
        "leanml.pipeline._optimize -> leanml.techniques.tune._sharing",
        "leanml.techniques -> leanml.techniques.tune._stage",
    ]


# Modules split past ~400 lines along a real seam (docs/style.md); none may pass this.
MAX_LINES = 500


def test_no_source_file_is_over_max_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these along a real seam: {long}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
