"""The package's layers import one way only: core ← io ← twin ← analysis ← learn ← front ends.

Every import of the package's own modules is read from the source (module-level and deferred
imports alike), so a science layer that reaches up into a front end, or a lower layer that
reaches into a higher one, fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_mx2_defects

ROOT = Path(napari_mx2_defects.__file__).parent
#: Rank of each top-level part; an import must go to a strictly lower rank (front ends may use each other).
#: ``core`` is the shared vocabulary every layer may import (bounds, tolerances); ``data`` holds tables.
RANKS = {"core": 0, "data": 0, "io": 1, "twin": 2, "analysis": 3, "learn": 4}
FRONT_END = 5


def _part(parts: list[str]) -> str:
    return parts[0] if parts else "__init__"


def _rank(part: str) -> int:
    return RANKS.get(part, FRONT_END)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(imported top-level part, line) for every import of the package's own modules in ``path``."""
    rel = path.relative_to(root)
    here = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            target = base + [p for p in (node.module or "").split(".") if p]
            if not target:  # "from . import x" at the top level
                target = [node.names[0].name]
            found.append((_part(target), node.lineno))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_mx2_defects."):
            found.append((node.module.split(".")[1], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_mx2_defects."):
                    found.append((alias.name.split(".")[1], node.lineno))
    return found


def test_layers_import_one_way_only():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        source = _part(list(rel.parts[:-1])) if len(rel.parts) > 1 else rel.stem
        for target, line in _imports(path):
            target = target.removesuffix(".py")
            if target == source or target in ("__version__",):
                continue
            if _rank(source) == FRONT_END and _rank(target) == FRONT_END:
                continue
            if _rank(target) >= _rank(source):
                wrong.append(f"{rel}:{line} ({source}, layer {_rank(source)}) imports {target} "
                             f"(layer {_rank(target)})")
    assert wrong == [], "imports against the layering:\n" + "\n".join(wrong)


def test_the_layering_test_sees_an_upward_import(tmp_path):
    """The checker itself: relative and absolute imports of a higher layer are both found."""
    (tmp_path / "analysis").mkdir()
    bad = tmp_path / "analysis" / "bad.py"
    bad.write_text("from ..learn.inference import segment_image\n\n\ndef f():\n"
                   "    import napari_mx2_defects.widgets.segment\n")
    assert _imports(bad, root=tmp_path) == [("learn", 1), ("widgets", 5)]


def _module_graph(root: Path = ROOT, package: str = "napari_mx2_defects") -> dict[str, set[str]]:
    """Module → the package's modules it imports (module-level and deferred imports alike)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(package + ".")):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for alias in node.names:
                    found = next((t for t in (f"{target}.{alias.name}", target) if t in modules), None)
                    if found and found != name:
                        edges[name].add(found)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    """No module reaches itself through imports, deferred ones included (batch → cli.main → cli.batch
    → batch was one: the one-line messages now live in core.messages)."""
    assert _cycles(_module_graph()) == []


def test_the_circle_test_sees_a_deferred_circle(tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("")
    (tmp_path / "batch.py").write_text("def f():\n    from .cli.main import message\n")
    (tmp_path / "cli" / "main.py").write_text("from .batch import run\n")
    (tmp_path / "cli" / "batch.py").write_text("from ..batch import f\n")
    (tmp_path / "core.py").write_text("")
    assert _cycles(_module_graph(tmp_path, "pkg")) == [["pkg.batch", "pkg.cli.batch", "pkg.cli.main"]]
