"""No import cycle in gateway/, not even a type-level one (issue 13).

Every ``gateway.*`` import counts: at module level, under ``if TYPE_CHECKING:``,
inside functions. A cycle among them means two modules can only be understood
(and changed) together; shared state lives in ``gateway/state.py`` and the relay
speaks to the ``Downstream`` interface instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"


def module_name(path: Path) -> str:
    return "gateway" if path.name == "__init__.py" else f"gateway.{path.stem}"


def gateway_imports(path: Path) -> set[str]:
    """The gateway modules ``path`` imports anywhere in its body, by module name."""
    modules = {module_name(p) for p in PACKAGE.glob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "gateway")
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module.split(".")[0] != "gateway":
                continue
            found.add(node.module)
            if node.module == "gateway":  # from gateway import admin, shared: submodules
                found.update(f"gateway.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path.name}: relative import; write gateway.* in full")
    found = {name for name in found if name in modules}
    found.discard(module_name(path))
    found.discard("gateway")  # the package's __init__ (the version) imports nothing of its own
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): gateway_imports(p) for p in sorted(PACKAGE.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None (depth-first search)."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_imports_under_type_checking_and_in_functions_count(tmp_path: Path) -> None:
    module = tmp_path / "example.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway.server import Gateway\n"
        "def f() -> None:\n    from gateway import admin\n"
    )
    assert gateway_imports(module) == {"gateway.server", "gateway.admin"}


def test_find_cycle_prints_the_cycle() -> None:
    graph = {"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.c"}, "gateway.c": {"gateway.a"}}
    assert find_cycle(graph) == ["gateway.a", "gateway.b", "gateway.c", "gateway.a"]
    assert find_cycle({"gateway.a": {"gateway.b"}, "gateway.b": set()}) is None


def test_graph_sees_type_checking_and_function_imports() -> None:
    graph = import_graph()
    assert "gateway.server" in graph["gateway.cli"]  # imported inside a function


def test_no_import_cycle_in_gateway() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
