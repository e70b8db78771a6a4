"""The package's import graph stays a hierarchy: no module imports, directly or through
others, a module that imports it back (lazy imports inside functions count too)."""

import ast

from conftest import REPO

SRC = REPO / "src"


def module_name(path):
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(f): f for f in (SRC / "vprflow").rglob("*.py")}

    def known(name):  # the module an imported name lives in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                start = ".".join(base + ([node.module] if node.module else []))
                names = [start] + [f"{start}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = known(name) if name.startswith("vprflow") else ""
                if target and target != module and not module.startswith(target + "."):
                    targets.add(target)  # a package's own __init__ is not an edge of its modules
        graph[module] = targets
    return graph


def test_no_import_circles():
    graph = import_graph()
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_graph_sees_the_lazy_imports():
    """A function-level import is an edge: descriptors.cnn imports train.cnn inside ``train``."""
    assert "vprflow.train.cnn" in import_graph()["vprflow.descriptors.cnn"]
