"""The pack's import direction (docs/architecture.md): every import between the pack's own modules, at file level or
inside a function, must point down the stack, and no modules may import each other in a cycle.

    python scripts/check_imports.py            # prints the folder drawing's arrows; exit 1 on an upward import
                                               # or a cycle
    python scripts/check_imports.py --modules  # also every module-level edge

Layers, top to bottom (a module may import its own layer or any layer below it, never one above):
    nodes/          the ComfyUI nodes (thin V3 interfaces); above them only the pack's entry points
                    (__init__.py, worker.py)
    training/       the UniMMVSR trainer
    distributed/    multi-GPU sampling (rendezvous, worker pool, the guider's multi-GPU strategy)
    model_loaders/  loading functions: files → ComfyUI objects (no nodes)
    samplers/       what ComfyUI samples with: model patches, guiders, attention backends
    kit.py          the node kit: identity, errors, input rules, the IMAGE rule
    core/           pure PyTorch: no ComfyUI, no pack module outside core/
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["nodes", "training", "distributed", "model_loaders", "samplers", "kit", "core"]
ENTRY_POINTS = {"__init__", "worker"}   # the package itself and the worker command: above every layer
SKIP = {"tests", "harness", "benchmarks", "scripts", "docs", "demo", ".venv", ".venv-floor", ".build", ".cache", "js"}


def pack_modules(root: str = REPO) -> dict[str, str]:
    """Dotted module name (relative to the pack) → file path, for every module of the pack."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        top = rel.split(os.sep)[0]
        if rel != "." and (top in SKIP or top.startswith(".")):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if not name.endswith(".py"):
                continue
            parts = [] if rel == "." else rel.split(os.sep)
            stem = name[:-3]
            if stem != "__init__":
                parts.append(stem)
            found[".".join(parts) or "__init__"] = os.path.join(folder, name)
    return found


def resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import, modules: dict) -> list[str]:
    """The pack modules an import statement names (relative imports resolved; outside packages ignored)."""
    targets = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        base_names = names
    else:
        if node.level:
            parts = [] if module == "__init__" else module.split(".")
            if not is_package:
                parts = parts[:-1]
            parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        submodules = [f"{base}.{a.name}" if base else a.name for a in node.names]
        base_names = [n for n in submodules if n in modules] or [base]   # `from pkg import module` names the module
    for name in base_names:
        if name in modules:
            targets.append(name)
    return sorted(set(targets))


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    if top in ENTRY_POINTS:
        return -1
    return LAYERS.index(top) if top in LAYERS else -1


def import_edges(root: str = REPO) -> dict[tuple[str, str], list[int]]:
    """(importer, imported) → the line numbers, over every import statement of the pack (function-local included)."""
    modules = pack_modules(root)
    edges: dict[tuple[str, str], list[int]] = defaultdict(list)
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(module, is_package, node, modules):
                    if target != module and not module.startswith(target + "."):   # a package's own __init__
                        edges[(module, target)].append(node.lineno)
    return edges


def upward(edges) -> list[str]:
    problems = []
    for (src, dst), lines in sorted(edges.items()):
        if layer_of(dst) == -1 and layer_of(src) != -1:
            problems.append(f"{src} imports the entry point {dst} (line {lines[0]})")
        elif layer_of(src) != -1 and layer_of(dst) < layer_of(src):
            problems.append(f"{src} (line {lines[0]}) imports {dst}: {dst.split('.')[0]}/ is above "
                            f"{src.split('.')[0]}/")
    return problems


def cycles(edges) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(set(graph) | {d for _, d in edges}):
        if v not in index:
            visit(v)
    return groups


def folder_arrows(edges) -> dict[tuple[str, str], int]:
    arrows = defaultdict(int)
    for src, dst in edges:
        a, b = src.split(".")[0], dst.split(".")[0]
        if a != b:
            arrows[(a, b)] += 1
    return dict(arrows)


def longest_chain(edges, start: str) -> list[str]:
    """The longest chain of imports (no module twice) that starts at ``start``: how far a reader following the
    imports of one module may have to go. Exhaustive over simple paths (the pack's graph is small)."""
    graph = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    best: list[str] = [start]

    def walk(path: list[str], seen: set) -> None:
        nonlocal best
        if len(path) > len(best):
            best = list(path)
        for nxt in sorted(graph[path[-1]]):
            if nxt not in seen:
                seen.add(nxt)
                path.append(nxt)
                walk(path, seen)
                path.pop()
                seen.discard(nxt)

    walk([start], {start})
    return best


def climbs(chain: list[str]) -> int:
    """Steps of a chain that go up the stack."""
    return sum(1 for a, b in zip(chain, chain[1:])
               if layer_of(a) != -1 and layer_of(b) != -1 and layer_of(b) < layer_of(a))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", action="store_true", help="also print every module-level edge")
    parser.add_argument("--chain", metavar="MODULE", help="print the longest import chain from MODULE "
                                                          "(e.g. samplers.unimmvsr_guider) and its upward steps")
    parser.add_argument("--root", default=REPO, help="the pack's folder (default: this repository)")
    args = parser.parse_args()
    edges = import_edges(args.root)
    if args.chain:
        chain = longest_chain(edges, args.chain)
        print(f"longest import chain from {args.chain}: {len(chain)} modules, {climbs(chain)} upward steps")
        print("  " + " → ".join(chain))
    print("folder arrows (importer → imported: module pairs):")
    for (a, b), n in sorted(folder_arrows(edges).items(), key=lambda kv: (layer_of(kv[0][0]), kv[0])):
        mark = "  UP" if layer_of(a) != -1 and layer_of(b) < layer_of(a) else ""
        print(f"  {a:>14} → {b:<14} {n:3d}{mark}")
    if args.modules:
        for (src, dst), lines in sorted(edges.items()):
            print(f"  {src} → {dst} (line {', '.join(map(str, lines))})")
    problems = upward(edges)
    for group in cycles(edges):
        problems.append("import cycle: " + " ⇄ ".join(group))
    for p in problems:
        print("error:", p)
    print(f"{len(edges)} module imports; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
