"""The shape of the code (issue 17 §2, §3): the CLI reaches the library only through the
public API, no module imports itself back through others, and ``import wnconvert`` stays
light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wnconvert"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, *, type_checking: bool = False) -> set[str]:
    """Modules of wnconvert that ``name`` imports, at any depth of its code; under
    ``if TYPE_CHECKING:`` (never run) only with ``type_checking``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}
#: With the imports only type checkers see: the CLI's reach, types included.
TYPED_GRAPH = {name: _imports(name, type_checking=True) for name in MODULES}


def _cycles() -> list[list[str]]:
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [])
    return cycles


def test_no_import_circles() -> None:
    assert _cycles() == []


def test_the_cli_reaches_the_library_only_through_the_public_api() -> None:
    allowed = {"wnconvert", "wnconvert.api", "wnconvert.errors", "wnconvert._version",
               "wnconvert.choices"}
    for name, imported in TYPED_GRAPH.items():
        if not name.startswith("wnconvert.cli"):
            continue
        for module in imported:
            assert module in allowed or module.startswith(
                ("wnconvert.render", "wnconvert.cli")), (name, module)


def test_library_code_never_imports_the_cli() -> None:
    for name, imported in GRAPH.items():
        if not name.startswith(("wnconvert.cli", "wnconvert.__main__")):
            assert not any(m.startswith("wnconvert.cli") for m in imported), name


def test_import_wnconvert_is_light_and_every_public_name_resolves() -> None:
    code = ("import sys, wnconvert, wnconvert.api; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy', 'rich') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "[getattr(wnconvert, n) for n in wnconvert.__all__]; "
            "import wnconvert.verification; "
            "assert wnconvert.verify is wnconvert.api.verify, 'wnconvert.verify is one thing'")
    subprocess.run([sys.executable, "-c", code], check=True)
