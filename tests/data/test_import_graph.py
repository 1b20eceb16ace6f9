"""The data modules import one another without a circle: the dataset readers build on
maskface.data.dataset, and only maskface.data.registry knows every reader (issue 14). Imports
inside functions count too (a lazy import is still a circle a maintainer trips on)."""
from __future__ import annotations

import ast
from pathlib import Path

import maskface.data

DATA_DIR = Path(maskface.data.__file__).parent


def data_imports(source: str, package: str = "maskface.data") -> set[str]:
    """The maskface.data modules (short names) that a module's source imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            parent = package.rsplit(".", node.level - 1)[0] if node.level else ""  # relative to maskface/data/
            base = ".".join(part for part in (parent, node.module) if part)
            if base == package:  # from maskface.data import x
                found |= {alias.name for alias in node.names}
            elif base.startswith(package + "."):
                found.add(base[len(package) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name[len(package) + 1:].split(".")[0] for a in node.names if a.name.startswith(package + ".")}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_sees_a_lazy_import_circle():
    """The layout before the fix: build_dataset imported the readers inside the function."""
    dataset = "def build_dataset():\n    from maskface.data.widerface import WiderFaceDataset\n"
    reader = "from maskface.data.dataset import FaceDataset\n"
    graph = {"dataset": data_imports(dataset), "widerface": data_imports(reader)}
    assert find_cycle(graph) == ["dataset", "widerface", "dataset"]
    assert data_imports("from ..data.dataset import x\nfrom . import files\n") == {"dataset", "files"}


def test_data_modules_import_each_other_without_a_circle():
    graph = {p.stem: data_imports(p.read_text()) for p in DATA_DIR.glob("*.py")}
    assert graph["registry"] >= {"widerface", "aflw", "w300", "dataset"}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"
