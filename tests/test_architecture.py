"""The layering the README's Layout section promises, checked on every import statement (also those
inside functions and ``TYPE_CHECKING`` blocks): data_prep <- recsys <- serving, no circles inside a
package, and recsys reaches data_prep only through its public API."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "recsys", "serving")
# data_prep's public API (data_prep/__init__.py): the dataset layout, file utilities, prepare_builtin
DATA_PREP_PUBLIC = {"data_prep", "data_prep.layout", "data_prep.io"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from a.b import c`` counts a.b.c when that is a module)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import recsys.nn.lru` -> the module itself
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def test_imports_flow_from_data_prep_to_recsys_to_serving():
    allowed = {"data_prep": {"data_prep"}, "recsys": {"data_prep", "recsys"}, "serving": set(PACKAGES)}
    wrong = [
        f"{src} imports {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if dst.split(".")[0] not in allowed[src.split(".")[0]]
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_recsys_uses_only_the_public_api_of_data_prep():
    wrong = [
        f"{src} imports {dst}"
        for src, targets in import_graph().items()
        if not src.startswith("data_prep")
        for dst in targets
        if dst.startswith("data_prep") and dst not in DATA_PREP_PUBLIC
    ]
    assert not wrong, "private data_prep modules used from outside:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = import_graph()
    # Tarjan's strongly connected components: any component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

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
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_checker_sees_imports_inside_functions():
    # builders imports data_prep.prepare_builtin inside a function only
    assert "data_prep" in imported_modules(ROOT / "recsys" / "builders.py", project_modules())
