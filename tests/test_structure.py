"""The package's shape: modules import only those below them (no circle, counting imports
inside functions) and stay small."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "projhead"
MAX_LINES = 500


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions."""
    modules = {p.stem for p in package.glob("*.py")}
    graph = {}
    for p in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import x
                    deps |= {a.name for a in node.names}
                elif node.module and node.module.split(".")[0] == package.name:
                    parts = node.module.split(".")
                    deps |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package.name + ".")}
        graph[p.stem] = {d for d in deps if d in modules and d != p.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_function_level_circles(tmp_path):
    pkg = tmp_path / "projhead"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from projhead.c import y\n")
    (pkg / "c.py").write_text("import projhead.a\n")
    assert find_cycle(import_graph(pkg)) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_circle_in_the_package():
    assert find_cycle(import_graph(PACKAGE)) is None


def test_every_module_is_under_the_line_limit():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert not long, f"modules of {MAX_LINES} lines or more: {long}"
