#!/usr/bin/env python3
"""The import graph between one crate's modules, file by file, and the cycles in it.

An edge A -> B means a file of module A names `crate::B` (in a `use` or a path) or, from inside
a folder module, a sibling through `super::`. A child naming its own ancestor (a folder's
`mod.rs` re-exporting, its files using the folder's shared types) is how Rust folders work and
is not counted. Usage:

    python3 tests/python/module_graph.py crates/distill [-v]

prints each cycle between files (strongly connected component of more than one module) and,
for information, those with each folder module taken whole; with -v, every edge. Exit status 1 when a cycle exists.
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
BRACED = re.compile(r"\b(crate|super)::\{([^}]*)\}", re.S)


def module_of(src: Path, file: Path) -> tuple:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def resolve(modules: set, base: tuple, names: list) -> tuple:
    """The longest known module prefix of base + names."""
    best = None
    path = list(base)
    for name in names:
        path.append(name)
        if tuple(path) in modules:
            best = tuple(path)
    return best


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def graph(crate: Path) -> dict:
    src = crate / "src"
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f) for f in files}
    edges = {m: set() for m in modules}
    for f in files:
        me = module_of(src, f)
        folder = me if f.stem == "mod" else me[:-1]
        text = strip_comments(f.read_text())
        refs = []
        for root, rest in PATH.findall(text):
            refs.append((root, rest.strip(":").split("::")))
        for root, inner in BRACED.findall(text):
            for item in inner.split(","):
                item = item.strip()
                if item:
                    refs.append((root, re.split(r"::|\s", item)[0:1]))
        for root, names in refs:
            base = () if root == "crate" else folder[:-1] if f.stem == "mod" else folder
            target = resolve(modules, base, names)
            if target is None or target == me or me[: len(target)] == target:
                continue  # itself, the crate root, or an ancestor
            # a module naming its own descendant is a parent using its child
            edges[me].add(target)
    return edges


def cycles(edges: dict) -> list:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(m: tuple) -> str:
    return "::".join(m) or "lib"


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "-v"]
    verbose = "-v" in sys.argv
    status = 0
    for crate in args:
        edges = graph(Path(crate))
        if verbose:
            for m in sorted(edges):
                if edges[m]:
                    print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")
        found = cycles(edges)
        for c in found:
            print(f"{crate}: cycle: {' <-> '.join(name(m) for m in c)}")
        if not found:
            print(f"{crate}: no cycles ({len(edges)} modules)")
        status |= bool(found)
        # Informational: each folder module taken whole. A folder may hold a low part and a
        # high part (qwen2's lora/: the adapter the model uses, and the PEFT files above
        # load and save), which is a layering, not a cycle between files.
        top = {}
        for m, targets in edges.items():
            top.setdefault(m[:1], set()).update(t[:1] for t in targets if t[:1] != m[:1])
        for c in cycles(top):
            print(f"{crate}: (folders taken whole: {' <-> '.join(name(m) for m in c)})")
    return status


if __name__ == "__main__":
    sys.exit(main())
