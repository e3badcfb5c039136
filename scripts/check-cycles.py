#!/usr/bin/env python3
"""Fails when the files of a crate import each other in a circle.

Reads every crate's `src/` (tests, benches and generated code are left
out), resolves each `use crate::...`, `use super::...` and `use self::...`
path (and the same paths written inline in code) to the file that
defines it, and looks for cycles among those file-to-file edges. A path
that names a module's item resolves to the module's file; `mod x;`
declarations are not edges (a parent declaring its children is not a
dependency). Prints each cycle with the names that tie it, and exits 1
when there is one that KNOWN does not list.

Usage: scripts/check-cycles.py [--list]   (--list prints every edge)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Circles still to be taken apart, each as the sorted files it spans;
# nothing may be added here, only removed.
KNOWN = []

USE = re.compile(r"\buse\s+((?:crate|super|self)(?:::[A-Za-z0-9_]+)*)(?:::\{([^;]*)\})?\s*(?:as\s+\w+)?\s*;", re.S)
INLINE = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def crates():
    for entry in sorted(os.listdir(ROOT)):
        src = os.path.join(ROOT, entry, "src")
        if os.path.isfile(os.path.join(ROOT, entry, "Cargo.toml")) and os.path.isdir(src):
            yield entry, src


def module_of(src, path):
    """The module path (list of names) a file under src defines."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main") and len(rel) == 1:
        return []
    if rel[-1] == "mod":
        rel = rel[:-1]
    return rel


def file_of(src, module):
    """The file defining `module`, if any."""
    if not module:
        for root in ("lib.rs", "main.rs"):
            if os.path.isfile(os.path.join(src, root)):
                return os.path.join(src, root)
        return None
    base = os.path.join(src, *module)
    for cand in (base + ".rs", os.path.join(base, "mod.rs")):
        if os.path.isfile(cand):
            return cand
    return None


def resolve(src, here, path):
    """The file a `crate::`/`super::`/`self::` path lands in."""
    parts = path.split("::")
    if parts[0] == "crate":
        mod, rest = [], parts[1:]
    else:
        mod = list(here)
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not mod:
                    return None
                mod = mod[:-1]
            rest = rest[1:]
    # The longest prefix that is a module with a file of its own.
    best = file_of(src, mod)
    for i in range(1, len(rest) + 1):
        f = file_of(src, mod + rest[:i])
        if f:
            best = f
    return best


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def test_module_start(text):
    m = re.search(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text)
    return m.start() if m else len(text)


def edges_of(src):
    edges = {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            here = module_of(src, path)
            text = open(path, encoding="utf-8").read()
            text = strip_comments(text[: test_module_start(text)])
            found = []
            for m in USE.finditer(text):
                head, group = m.group(1), m.group(2)
                if group:
                    for item in re.split(r",", re.sub(r"\{[^}]*\}", "", group)):
                        item = item.strip().split(" as ")[0].strip()
                        if item and item != "self":
                            found.append(head + "::" + item.split("::")[0])
                        elif item == "self":
                            found.append(head)
                    # Nested groups: `a::{b::{c, d}}`.
                    for sub in re.finditer(r"(\w+)::\{", group):
                        found.append(head + "::" + sub.group(1))
                else:
                    found.append(head)
            for m in INLINE.finditer(USE.sub("", text)):
                found.append(m.group(1))
            for p in found:
                target = resolve(src, here, p)
                if target and target != path:
                    edges.setdefault(path, {}).setdefault(target, set()).add(p.split("::")[-1])
    return edges


def cycles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    listing = "--list" in sys.argv
    bad = 0
    total = 0
    for crate, src in crates():
        edges = edges_of(src)
        rel = lambda p: os.path.relpath(p, ROOT)
        if listing:
            for a in sorted(edges):
                for b in sorted(edges[a]):
                    print(f"{rel(a)} -> {rel(b)}: {', '.join(sorted(edges[a][b]))}")
        for comp in cycles(edges):
            total += 1
            names = [rel(p) for p in comp]
            known = names in KNOWN
            print(f"{'known ' if known else ''}cycle in {crate}: {', '.join(names)}")
            for a in comp:
                for b in comp:
                    if b in edges.get(a, {}):
                        print(f"  {rel(a)} -> {rel(b)}: {', '.join(sorted(edges[a][b]))}")
            if not known:
                bad += 1
    print(f"{total} cycle(s) of files, {bad} not known")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
