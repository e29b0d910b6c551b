"""The layers of src/semcode (the module map in semcode/__init__.py): a module imports only from its own
layer or the ones below, and no two modules import each other, directly or around a circle. Imports
inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import semcode

SRC = Path(semcode.__file__).resolve().parent
LAYERS = [  # lowest first; the first part of a module's name below semcode decides its layer
    {"semcode", "contract", "config", "progress", "storage", "locks"},
    {
        "data",
        "tokenizer",
        "models",
        "losses",
        "train",
        "mining",
        "evaluation",
        "suites",
        "everyday",
        "embed",
        "export",
        "index",
        "corpus",
        "indexing",
        "index_bundle",
        "embedding_cache",
        "retrieval",
        "bundle",
        "bundle_checks",
        "registry",
        "portable",
        "report",
        "hub_card",
        "decoding",
    },  # fmt: skip
    {"stages", "cluster", "serve"},
    {"components"},
    {"pipeline"},
    {"cli", "completion"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The semcode modules a file imports (``from semcode import x`` names module semcode.x when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "semcode"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "semcode":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (SRC.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or (
                    SRC.parent / candidate.replace(".", "/") / "__init__.py"
                ).is_file()
                found.add(candidate if is_module else node.module)
    return found


GRAPH = {module_name(path): imports_of(path) for path in SRC.rglob("*.py")}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "semcode"
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(f"{module} is in no layer: add semcode.{top} to LAYERS and the module map")


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        layer_of(module)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle() -> None:
    def package_chain(module: str) -> set[str]:  # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = module.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH.get(module, set()) - package_chain(module) - {module}):
            if state.get(target) == "open":
                circle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_layer_test_sees_a_violation(tmp_path: Path) -> None:
    """The check itself: a stage module that imported the pipeline drivers would be caught."""
    planted = tmp_path / "semcode" / "stages" / "x.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from semcode.pipeline import local\n")
    assert "semcode.pipeline.local" in imports_of(planted)
    assert layer_of("semcode.pipeline.local") > layer_of("semcode.stages.x")
