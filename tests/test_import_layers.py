"""The packages import only downward, without cycles or private names of other packages.

Every import counts: module-level and function-level ones (an import inside a function is a
dependency all the same, only a later one). The layer order is the one of docs/architecture.md
("## Layers"); the checks take a root folder, so they can be pointed at any checkout.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PACKAGES = ("equirecon", "data_pipeline", "pretrain", "evals", "launch")

# Bottom to top: a module may import its own layer and the layers below it, never one above.
# A module belongs to the layer of the longest prefix that names it (the command line sits in the
# `equirecon` package but is the top layer).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("equirecon",)),
    ("data", ("data_pipeline",)),
    ("pretrain", ("pretrain",)),
    ("evals", ("evals",)),
    ("launch", ("launch",)),
    ("app", ("equirecon.cli", "equirecon.__main__")),
)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the project module imported (deepest existing one)
    names: tuple[str, ...]  # `from target import names` (names that are not modules)
    line: int
    path: Path

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def project_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted name -> file of every module of `packages` under `root` (packages as `pkg`)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _deepest_module(dotted: str, modules: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) `from … import`."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def collect_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import (at any depth of the syntax tree) of one project module by another."""
    modules = project_modules(root, packages)
    found: list[Import] = []
    for module, path in modules.items():
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _deepest_module(alias.name, modules)
                    if target is not None:
                        found.append(Import(module, target, (), node.lineno, path))
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path, node)
                if _deepest_module(base, modules) is None:
                    continue
                plain: list[str] = []
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:  # `from pkg import submodule`
                        found.append(Import(module, f"{base}.{alias.name}", (), node.lineno, path))
                    else:
                        plain.append(alias.name)
                if plain:
                    target = _deepest_module(base, modules)
                    found.append(Import(module, target, tuple(plain), node.lineno, path))
    return found


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int:
    """Index (0 = bottom) of the layer whose longest prefix names `module`."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise ValueError(f"{module} is in no layer of {[name for name, _ in layers]}")
    return best


def upward_imports(root: Path, layers=LAYERS, packages=PACKAGES) -> list[str]:  # noqa: ANN001
    """Imports of a module of a higher layer, one line each."""
    names = [name for name, _ in layers]
    bad = []
    for imp in collect_imports(root, packages):
        low, high = layer_of(imp.importer, layers), layer_of(imp.target, layers)
        if high > low:
            bad.append(
                f"{imp.where(root)}: {imp.importer} ({names[low]}) imports {imp.target} "
                f"({names[high]}), a higher layer"
            )
    return bad


def import_cycles(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """The strongly connected components (of more than one module, or a module importing
    itself) of the module import graph: each is at least one cycle."""
    graph: dict[str, set[str]] = {m: set() for m in project_modules(root, packages)}
    for imp in collect_imports(root, packages):
        graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # Tarjan's algorithm, iteratively (no recursion limit)
        nonlocal counter
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(components)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Private (underscore) names of another top-level package: `from x import _name`, a
    private module `x._mod`, or `module._name` on a module imported from another package."""
    modules = project_modules(root, packages)
    bad = []
    for imp in collect_imports(root, packages):
        if imp.importer.split(".")[0] == imp.target.split(".")[0]:
            continue
        private = [n for n in imp.names if _private(n)]
        private += [p for p in imp.target.split(".") if _private(p)]
        if private:
            bad.append(f"{imp.where(root)}: {imp.importer} imports {private} of {imp.target}")
    for module, path in modules.items():
        tree = _parse(path)
        own = module.split(".")[0]
        bound: dict[str, str] = {}  # local name -> module of another package
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _deepest_module(alias.name, modules)
                    if target is None or target.split(".")[0] == own:
                        continue
                    if alias.asname:
                        bound[alias.asname] = target
                    else:  # `import a.b.c` binds `a`
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path, node)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules and full.split(".")[0] != own:
                        bound[alias.asname or alias.name] = full
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if not isinstance(inner, ast.Name) or inner.id not in bound:
                continue
            chain.reverse()
            names = [n for n in chain if _private(n)]
            if names:
                dotted = ".".join([bound[inner.id], *chain])
                bad.append(f"{path.relative_to(root)}:{node.lineno}: {module} uses {dotted}")
    return sorted(set(bad))


# --- the checks on this checkout ----------------------------------------------------------------


def test_every_module_is_in_a_layer() -> None:
    for module in project_modules(REPO):
        layer_of(module)


def test_imports_go_only_downward() -> None:
    bad = upward_imports(REPO)
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    cycles = import_cycles(REPO)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_of_other_packages() -> None:
    bad = private_imports(REPO)
    assert not bad, "private names used across packages:\n" + "\n".join(bad)


def test_the_layer_table_is_the_documented_one() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    for name, prefixes in LAYERS:
        assert f"`{name}`" in doc, f"layer {name} is not in docs/architecture.md"
        for prefix in prefixes:
            assert prefix in doc, f"{prefix} (layer {name}) is not in docs/architecture.md"


# --- the checks catch what they are meant to catch --------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    """Three layers: a (bottom), b, c (top), with one of each fault, all inside functions."""
    return _tree(
        tmp_path,
        {
            "a/__init__.py": "",
            "a/core.py": "def f():\n    from b.mid import g\n    return g\n",  # up + cycle
            "a/_hidden.py": "",
            "b/__init__.py": "",
            "b/mid.py": "from a.core import f\n\ndef g():\n    from a import _hidden\n",
            "c/__init__.py": "",
            "c/top.py": "import a.core as core\nfrom ..b import mid\n\nx = core._secret\n",
        },
    )


SMALL_LAYERS = (("a", ("a",)), ("b", ("b",)), ("c", ("c",)))


def test_checks_find_upward_imports_cycles_and_private_names(small_project: Path) -> None:
    packages = ("a", "b", "c")
    assert [
        line.split(": ", 1)[1] for line in upward_imports(small_project, SMALL_LAYERS, packages)
    ] == ["a.core (a) imports b.mid (b), a higher layer"]
    assert import_cycles(small_project, packages) == [["a.core", "b.mid"]]
    private = private_imports(small_project, packages)
    assert any("b.mid imports ['_hidden'] of a._hidden" in p for p in private), private
    assert any("c.top uses a.core._secret" in p for p in private), private
    assert len(private) == 2, private
