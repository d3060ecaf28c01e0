"""The house figures of the source tree, from ``ast`` alone (nothing is imported):

    python scripts/house_figures.py [--root DIR] [--json]

prints source files and lines (tracked ``.py`` outside tests/), the median file, the largest
functions, the import cycles, and the imports that break the layer rules (``LAYERS``). The same
graph and rules back the import-graph test (tests/test_import_graph.py).

The graph: every module of the ``kbridge`` namespace (folders mapped by pyproject's
``wheel.packages``) and every ``import`` / ``from … import`` of a ``kbridge`` module in it, at the
top of a file or inside a function (an import inside a function still makes a cycle), except under
``if TYPE_CHECKING:``. ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module.
A cycle is a strongly connected component of two or more modules.
"""
from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", (
        "kbridge.engine.errors", "kbridge.engine.types", "kbridge.engine.config", "kbridge.engine.profiles", "kbridge.engine.rows",
        "kbridge.engine.locks", "kbridge.engine.faults", "kbridge.engine.inputs", "kbridge.engine.data",
        "kbridge.engine.published", "kbridge.engine.store", "kbridge.engine.trace", "kbridge.kernels")),
    ("models", (
        "kbridge.export", "kbridge.engine.zoo", "kbridge.engine.twins", "kbridge.engine.runtime",
        "kbridge.engine.lmm", "kbridge.engine.generate", "kbridge.engine.rank",
        "kbridge.engine.plan",
        "kbridge.engine.estimate", "kbridge.engine.fullsize")),
    ("pipeline", ("kbridge.engine.stages", "kbridge.engine.domains", "kbridge.engine.retrieve",
                  "kbridge.engine.models")),
    ("executors", ("kbridge.engine.executors",)),
    ("front ends", (
        "=kbridge.engine", "kbridge.engine.api", "kbridge.engine.serve", "kbridge.engine.report",
        "kbridge.engine.executors.ray", "kbridge.engine.peers")),
    ("benchmarks", ("kbridge.benchmarks",)),
    ("cli", ("kbridge.cli",)),
]
"""Bottom to top. A module may import a module of its own layer or of a layer below, never one
above. Each name stands for the module and everything under it (the longest name wins); ``=name``
for that module alone (the ``kbridge.engine`` package, whose ``Engine`` is the public API)."""

RENAMED = {
    "kbridge.engine.executor": "kbridge.engine.executors.local",
    "kbridge.engine.phased": "kbridge.engine.executors.phased",
    "kbridge.engine.ray_executor": "kbridge.engine.executors.ray",
    "kbridge.engine.ray_plan": "kbridge.engine.executors.ray_plan",
    "kbridge.engine.sink": "kbridge.engine.executors.sink",
    "kbridge.engine.rank.retrieve": "kbridge.engine.retrieve.corpus",
    "kbridge.engine.rank.index": "kbridge.engine.retrieve.index",
    "kbridge.engine.mire": "kbridge.engine.retrieve.mire",
    "kbridge.engine.classify": "kbridge.engine.peers.classify",
    "kbridge.engine.recover": "kbridge.engine.peers.recover",
}
"""Modules before the house step's moves → where they went, so that the figures of a tree from
before the moves (``--root``) are placed by the same layers. Not used by the test."""


@dataclass(frozen=True)
class Import:
    src: str
    dst: str
    path: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at the top"
        return f"{self.src} imports {self.dst} ({self.path}:{self.line}, {where})"


def packages(root: Path) -> dict[str, str]:
    """Folder → package (``engine`` → ``kbridge.engine``), from pyproject's ``wheel.packages``."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    table = cfg["tool"]["scikit-build"]["wheel"]["packages"]
    return {folder: pkg.replace("/", ".") for pkg, folder in table.items()}


def modules(root: Path) -> dict[str, Path]:
    """Module name → file, for every ``.py`` under the mapped folders (untracked files too)."""
    out = {}
    for folder, pkg in packages(root).items():
        for f in sorted((root / folder).rglob("*.py")):
            rel = f.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__pycache__" not in rel.parts:
                out[".".join([pkg, *parts])] = f
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """(node, inside a function) for each import statement, skipping ``if TYPE_CHECKING:`` blocks."""
    stack = [(tree, False)]
    while stack:
        node, in_fn = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_fn
            continue
        children = node.orelse if isinstance(node, ast.If) and _type_checking(node) else ast.iter_child_nodes(node)
        inner = in_fn or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((c, inner) for c in children)


def _known(name: str, mods: dict) -> str | None:
    """``name`` or its longest prefix that is a module."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def graph(root: Path = ROOT) -> tuple[dict[str, Path], list[Import]]:
    mods = modules(root)
    edges = []
    for src, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node, in_fn in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = src if is_pkg else src.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                dst = _known(t, mods) if t.startswith("kbridge.") else None
                if dst and dst != src:
                    edges.append(Import(src, dst, str(path.relative_to(root)), node.lineno, in_fn))
    return mods, edges


def cycles(mods, edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan), each sorted."""
    succ: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        succ[e.src].add(e.dst)
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(mods) + 100))
    for v in sorted(succ):
        if v not in index:
            visit(v)
    return sorted(out)


def cycle_imports(comp: list[str], edges: list[Import]) -> list[Import]:
    """The imports that hold a component together (both ends inside it)."""
    inside = set(comp)
    return [e for e in edges if e.src in inside and e.dst in inside]


def layer_of(module: str, renamed: dict | None = None) -> int | None:
    """Index in ``LAYERS`` (0 = foundations), or None for a module no entry covers."""
    for old, new in (renamed or {}).items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
            break
    best, best_len = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if n.startswith("="):
                hit = module == n[1:]
            else:
                hit = module == n or module.startswith(n + ".")
            if hit and len(n.lstrip("=")) > best_len:
                best, best_len = i, len(n.lstrip("="))
    return best


def upward(edges: list[Import], renamed: dict | None = None) -> list[Import]:
    """Imports of a module in a higher layer than the importer's."""
    out = []
    for e in edges:
        a, b = layer_of(e.src, renamed), layer_of(e.dst, renamed)
        if a is not None and b is not None and b > a:
            out.append(e)
    return out


def unplaced(mods, renamed: dict | None = None) -> list[str]:
    return sorted(m for m in mods if layer_of(m, renamed) is None)


def _source_files(root: Path) -> list[Path]:
    """Tracked ``.py`` outside tests/ (all of them when ``root`` is not a git checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(root)) for p in root.rglob("*.py")]
    skip = ("tests/", ".venv", "build/")
    return [root / n for n in sorted(names) if not n.startswith(skip) and (root / n).exists()]


def figures(root: Path = ROOT, renamed: dict | None = None) -> dict:
    files = _source_files(root)
    lines = {str(f.relative_to(root)): f.read_bytes().count(b"\n") for f in files}
    fns = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fns.append((node.end_lineno - node.lineno + 1, f"{f.relative_to(root)}:{node.lineno} {node.name}"))
    fns.sort(reverse=True)
    mods, edges = graph(root)
    comps = cycles(mods, edges)
    up = upward(edges, renamed)
    return {"files": len(files), "lines": sum(lines.values()),
            "median_file_lines": statistics.median(lines.values()) if lines else 0,
            "largest_files": sorted(lines.items(), key=lambda kv: -kv[1])[:5],
            "functions": len(fns), "functions_over_80_lines": sum(1 for n, _ in fns if n > 80),
            "largest_functions": fns[:5], "modules": len(mods), "imports": len(edges),
            "function_level_imports": sum(e.in_function for e in edges),
            "cycles": comps, "upward_imports": [str(e) for e in up],
            "unplaced_modules": unplaced(mods, renamed)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="a checkout (default: this one)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    f = figures(a.root.resolve(), RENAMED)
    if a.json:
        print(json.dumps(f, indent=1))
        return 0
    print(f"source files {f['files']}, lines {f['lines']}, median file {f['median_file_lines']:g} lines")
    print("largest files: " + ", ".join(f"{p} {n}" for p, n in f["largest_files"]))
    print(f"functions {f['functions']}, over 80 lines {f['functions_over_80_lines']}; largest: "
          + ", ".join(f"{where} {n}" for n, where in f["largest_functions"]))
    print(f"modules {f['modules']}, kbridge imports {f['imports']} ({f['function_level_imports']} inside functions)")
    print(f"cycles {len(f['cycles'])}")
    for c in f["cycles"]:
        print("  " + " ↔ ".join(c))
    print(f"upward imports {len(f['upward_imports'])}")
    for u in f["upward_imports"]:
        print("  " + u)
    if f["unplaced_modules"]:
        print(f"modules in no layer {len(f['unplaced_modules'])}: " + ", ".join(f["unplaced_modules"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
