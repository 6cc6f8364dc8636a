"""The package's layout rules, read from its source: short functions and no import cycles.

Every ``import`` inside ``remat/`` counts, wherever it stands: at the top, inside a function
(lazy) or under ``if TYPE_CHECKING:``. The allow-lists name today's known offenders in files
that are being reworked; they are meant to shrink to nothing, and a test fails when an entry is
no longer needed, so that the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[2] / "remat"
MAX_FUNCTION_LINES = 80

# "module.qualified.function" -> why it is still allowed (to be emptied, see issue 10)
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}
# import edges (importer, imported) allowed to close a cycle for now (to be emptied, see issue 10)
CYCLE_EDGES_ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The remat modules that ``name`` imports anywhere in its source (lazy and TYPE_CHECKING too).

    ``from .x import y`` counts as importing ``remat.x.y`` when that is a module, else ``remat.x``;
    the implicit import of parent packages is not counted.
    """
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def import_graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        g.add_edges_from((name, dep) for dep in imported_modules(name, path, set(mods)))
    return g


def long_functions() -> dict[str, int]:
    """``module.qualified.name`` -> lines, for every function (nested ones too) over the limit."""
    out: dict[str, int] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, name)]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lines = child.end_lineno - child.lineno + 1
                        if lines > MAX_FUNCTION_LINES:
                            out[qual] = lines
                    stack.append((child, qual))
                else:
                    stack.append((child, prefix))
    return out


def test_scanner_sees_lazy_and_type_checking_imports(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
                   "def f():\n    from .b import c\n    import remat.d\n")
    known = {"remat.a", "remat.b", "remat.b.c", "remat.d"}
    assert imported_modules("remat.mod", src, known) == {"remat.a", "remat.b.c", "remat.d"}


def test_no_function_over_the_limit():
    found = long_functions()
    new = {f: n for f, n in found.items() if f not in LONG_FUNCTIONS_ALLOWED}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines: {new}"
    stale = sorted(set(LONG_FUNCTIONS_ALLOWED) - set(found))
    assert not stale, f"no longer over the limit, remove from LONG_FUNCTIONS_ALLOWED: {stale}"


def test_no_import_cycle():
    g = import_graph()
    assert g.has_edge("remat.cli", "remat.analyze")  # the scanner sees the lazy imports
    allowed = [e for e in CYCLE_EDGES_ALLOWED if g.has_edge(*e)]
    g.remove_edges_from(allowed)
    cycles = sorted(sorted(c) for c in nx.simple_cycles(g))
    assert not cycles, f"import cycles between remat modules: {cycles}"
    stale = sorted(set(CYCLE_EDGES_ALLOWED) - set(allowed))
    assert not stale, f"no longer imported, remove from CYCLE_EDGES_ALLOWED: {stale}"


def test_plots_take_plain_data():
    assert not set(import_graph().successors("remat.plots")), "plots must import no remat module"
