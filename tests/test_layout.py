"""The package's shape is a contract: no import cycles (deferred imports included), no private names
imported across modules, no module named like the standard library, modules and pages of readable size,
and every forward pass on a model through the one locked `forward`."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "explorer").rglob("*.py"))
PAGES = sorted((ROOT / "pages").glob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_not_even_deferred_ones() -> None:
    graph = grimp.build_graph("explorer", cache_dir=None)  # counts imports inside functions too
    assert len(graph.modules) > 40
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_deferred_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")  # e.g. `def f(): from pkg.a import g`
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for path in [*LIBRARY, *PAGES, ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("explorer"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                if private:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module} {private}")
    assert offenders == []


def test_no_module_shares_a_standard_library_name() -> None:
    clashes = [
        str(p.relative_to(ROOT))
        for p in LIBRARY
        if p.stem != "__init__" and p.stem in sys.stdlib_module_names
    ]
    packages = [
        str(p.relative_to(ROOT)) for p in (ROOT / "explorer").iterdir() if p.name in sys.stdlib_module_names
    ]
    assert clashes + packages == []


def test_modules_and_pages_stay_readable() -> None:
    long_modules = {
        _module(p): n for p in LIBRARY if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    long_pages = {p.name: n for p in PAGES if (n := len(p.read_text(encoding="utf-8").splitlines())) > 150}
    assert long_modules == {} and long_pages == {}


def test_every_subpackage_says_what_it_owns() -> None:
    for init in sorted((ROOT / "explorer").glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and len(docstring.split()) >= 15, f"{init.relative_to(ROOT)} needs a docstring"


def _calls_a_model(node: ast.Call) -> bool:
    """`model(...)`, `loaded.model(...)`, `base.model(...)`: a direct forward pass on a model."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name == "model"


def test_every_forward_pass_goes_through_the_locked_forward() -> None:
    # The safety fine-tune trains its own private LoRA copy with gradients; nobody else holds that model.
    allowed = {"explorer/core/hooks.py", "explorer/refusal/organism.py:train_lora"}
    direct = []
    for path in LIBRARY:
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(function):
                exempt = rel in allowed or f"{rel}:{function.name}" in allowed
                if isinstance(node, ast.Call) and _calls_a_model(node) and not exempt:
                    direct.append(f"{rel}:{node.lineno} in {function.name}")
    assert direct == []


def test_every_public_name_of_the_library_is_used_somewhere() -> None:
    """Dead code reads as a feature: every public function, class and constant a module defines is named
    somewhere else in the project (the library, pages, app, benches or tests)."""
    sources = [*LIBRARY, *PAGES, ROOT / "app.py", *ROOT.glob("bench/*.py"), *ROOT.glob("tests/*.py")]
    everything = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    unused = []
    for path in LIBRARY:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in names:
                if not name.startswith("_") and len(re.findall(rf"\b{name}\b", everything)) < 2:
                    unused.append(f"{path.relative_to(ROOT)}: {name}")
    assert unused == []


def test_the_readme_layout_table_names_modules_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout") : readme.index("## Tests")]
    named = set(re.findall(r"`([a-z_/*]+\.py)", section))
    assert len(named) > 30
    missing = [
        name
        for name in sorted(named)
        if not any((base / name).exists() or list(base.glob(name)) for base in (ROOT, ROOT / "explorer"))
    ]
    assert missing == []
    covered = {p.relative_to(ROOT / "explorer").as_posix() for p in LIBRARY if p.stem != "__init__"}
    listed = {p.relative_to(ROOT / "explorer").as_posix() for n in named for p in (ROOT / "explorer").glob(n)}
    assert sorted(covered - listed) == []  # every module has its row
