#!/usr/bin/env python3
"""Fail if the crate's top-level modules import each other in a cycle.

    check-module-graph.py [SRC_DIR] [--print]

A module is a file `src/NAME.rs` with its submodules (`src/NAME/...`). Module A
depends on B when any file of A names `crate::B` (in a `use` or a path, outside
comments; `crate::{B, ...}` groups too). The graph must be a DAG: it reads as the
data path, Python -> submit -> Tokio -> mailbox -> reactor. `--print` prints it in
dependency order (each module after everything it uses).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOTS = {"lib"}


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def names_in_group(group: str) -> list[str]:
    """`a, b::c, d::{e, f}` -> [a, b, d] (top level only)."""
    depth, names, current = 0, [], ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            names.append(current)
            current = ""
            continue
        current += ch if depth == 0 else ""
    names.append(current)
    return [n.strip().split("::")[0].strip() for n in names if n.strip()]


def graph(src: Path) -> dict[str, set[str]]:
    files: dict[str, list[Path]] = {}
    for path in sorted(src.rglob("*.rs")):
        top = path.relative_to(src).parts[0].removesuffix(".rs")
        if top not in ROOTS:
            files.setdefault(top, []).append(path)
    edges: dict[str, set[str]] = {module: set() for module in files}
    for module, paths in files.items():
        for path in paths:
            text = strip_comments(path.read_text())
            deps = re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text)
            for group in re.findall(r"\bcrate::\{([^;]*?)\}\s*;", text):
                deps += names_in_group(group)
            edges[module] |= {d for d in deps if d in files and d != module}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def order(edges: dict[str, set[str]]) -> list[str]:
    done: list[str] = []
    while len(done) < len(edges):
        ready = sorted(m for m in edges if m not in done and edges[m] <= set(done))
        done += ready
    return done


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "src"
    edges = graph(src)
    cycle = find_cycle(edges)
    if cycle:
        print("module cycle: " + " -> ".join(cycle), file=sys.stderr)
        return 1
    if "--print" in sys.argv:
        for module in order(edges):
            deps = ", ".join(sorted(edges[module])) or "-"
            print(f"{module:12} uses {deps}")
    else:
        print(f"module graph: {len(edges)} modules, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
