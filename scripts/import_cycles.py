"""List import cycles among mixchat's modules, counting imports inside functions (not TYPE_CHECKING ones).

CI runs it (`python scripts/import_cycles.py` exits 1 on a cycle); import-linter's contracts check the
layer order, this checks that no two modules need each other at run time.
"""

from __future__ import annotations

import sys

import grimp


def cycles(package: str = "mixchat") -> list[list[str]]:
    graph = grimp.build_graph(package, include_external_packages=False, exclude_type_checking_imports=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


if __name__ == "__main__":
    found = cycles()
    for comp in found:
        print("import cycle: " + " <-> ".join(comp))
    print(f"{len(found)} import cycles")
    sys.exit(1 if found else 0)
