"""Import circles inside the ``bertsilicon`` package: none may exist.

Reads every module's ``import`` statements (module level and inside functions alike: a function-level import
is still a dependency, only a later one) and reports each strongly connected group of modules that import one
another, directly or through others. A package's ``__init__`` counts as importing what it imports; ``from . import
x`` is an edge to the submodule ``x``. Exit status 1 when there is a circle.

    python tools/check_imports.py [PACKAGE_DIR]     # default: bertsilicon/
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``package``."""
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    for path in package.rglob("*.so"):  # compiled extensions: modules that import nothing of the package
        parts = path.relative_to(package.parent).parts
        out[".".join([*parts[:-1], path.name.split(".")[0]])] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports."""
    if path.suffix != ".py":
        return set()
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:  # `from pkg import sub` names a submodule when one exists
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    edges = set()
    for target in found:
        while target and target not in known:  # `import a.b.c` of a non-module attribute: its module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph(package: Path = ROOT / "bertsilicon") -> dict[str, set[str]]:
    mods = modules(package)
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    package = Path(argv[0]) if argv else ROOT / "bertsilicon"
    found = circles(import_graph(package))
    for group in found:
        print("import circle: " + " <-> ".join(group))
    print(f"{len(found)} import circle(s) in {package}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
