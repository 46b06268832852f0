"""The layers of STYLE.md, enforced: core (pure) <- datapath, mesh (adapters)
<- agent, api <- lab, bench <- cli. A module imports nothing from a layer
above its own, no two modules import each other through any chain (lazy
and ``TYPE_CHECKING`` imports count: they hide a cycle, they do not remove
it), and every module imports alone in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xpro_mesh"

LAYERS = {
    "core": 0,
    "algorithm": 0,
    "units": 0,
    "extras": 0,  # optional dependencies named by their extra; imports nothing of ours
    "datapath": 1,
    "mesh": 1,
    "agent": 2,
    "api": 2,
    "lab": 3,
    "client": 3,  # what devices run: imports nothing from the agent
    "bench": 3,
    "cli": 4,
    "__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in modules() if m != "xpro_mesh" and layer(m) is None]
    assert unplaced == [], f"add these to LAYERS: {unplaced}"


def test_no_module_imports_from_a_layer_above() -> None:
    upward = [
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in graph().items()
        for d in sorted(deps)
        if m != "xpro_mesh" and d != "xpro_mesh" and (layer(d) or 0) > (layer(m) or 0)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_hidden_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_every_module_imports_alone() -> None:
    def try_import(name: str) -> str | None:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=PACKAGE.parent,
        )
        if done.returncode == 0:
            return None
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        return f"{name}: {last}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        names = sorted(m for m in modules() if m != "xpro_mesh.__main__")  # runs the CLI
        failures = [f for f in pool.map(try_import, names) if f is not None]
    assert failures == []
