"""The package's architecture holds: no import cycles, each subpackage imports only what its
docstring's "May import:" line allows, no private name is used across modules, and modules
stay small enough to read."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imgcomp"
# Modules over MAX_LINES that do a single job (one file format).
ONE_JOB_EXCEPTIONS = {"imgcomp.original.tf_bundle": "the TF1 tensor-bundle reader"}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
SUBPACKAGES = sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m != "imgcomp")


def imported_modules(path: Path) -> set[str]:
    """The imgcomp modules `path` imports, anywhere in it (functions included): a lazy import
    is still a dependency."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "imgcomp"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "imgcomp":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in MODULES}
    return {m for m in found if m in MODULES}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports; importing a.b.c also runs a/__init__ and a/b/__init__,
    which hold only docstrings (checked below), so they are left out."""
    return {m: {d for d in imported_modules(p) if d != m} for m, p in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_subpackage_inits_hold_only_a_docstring():
    for name in SUBPACKAGES:
        body = ast.parse(MODULES[name].read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), name


def allowed_imports(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    match = re.search(r"May import: (.*?)\.?\s*$", doc, re.S)
    assert match, f"{package}'s docstring has no 'May import:' line"
    text = match.group(1)
    if text.startswith("nothing"):
        return set()
    return {m.strip() for m in text.replace("\n", " ").split(",")}


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackage_imports_only_what_its_docstring_allows(package):
    allowed = allowed_imports(package) | {package}
    assert allowed <= set(SUBPACKAGES) | {package}, "the docstring names no such subpackage"
    wrong = sorted(f"{m} imports {d}" for m, p in MODULES.items()
                   if m.startswith(package + ".")
                   for d in imported_modules(p)
                   if ".".join(d.split(".")[:2]) not in allowed)
    assert wrong == []


def python_files() -> list[Path]:
    folders = (PACKAGE, ROOT / "tests", ROOT / "bench")
    files = [p for folder in folders for p in sorted(folder.rglob("*.py"))]
    return files + sorted(ROOT.glob("*.py"))


def private_uses(path: Path) -> list[str]:
    """`from imgcomp.x import _name`, and `alias._name` for a module alias bound by an import
    of an imgcomp module."""
    tree = ast.parse(path.read_text())
    aliases, uses = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgcomp"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    uses.append(f"from {node.module} import {a.name}")
                if f"{node.module}.{a.name}" in MODULES:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.startswith("imgcomp")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            uses.append(f"{node.value.id}.{node.attr}")
    return uses


def test_private_uses_are_found():
    text = "from imgcomp.base import atomic\nfrom imgcomp.api import _find\natomic._x\n"
    path = ROOT / "tests" / "data" / "private_use_probe.py"
    try:
        path.write_text(text)
        assert private_uses(path) == ["from imgcomp.api import _find", "atomic._x"]
    finally:
        path.unlink()


def test_no_private_names_used_across_modules():
    found = {str(p.relative_to(ROOT)): uses for p in python_files() if (uses := private_uses(p))}
    assert found == {}


def test_modules_stay_small():
    big = {m: n for m, p in MODULES.items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES and m not in ONE_JOB_EXCEPTIONS}
    assert big == {}
