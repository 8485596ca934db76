"""The package's import graph reads top-down: no cycles, and no layer imports one above it.

Layers, bottom first (a module may import its own package and any layer below):

    errors, outputs, config                      the base every layer may use
    text      report text: labels, questions, answers           (no torch)
    io        real files and tables in                          (no torch)
    synthetic the phantom world: patients, phantom, reports     (no torch)
    models    encoders, projector, language model, survival head (of text: only questions and findings)
    features  volumes -> preprocessed tensors -> frozen features
    evaluation, training, then one patient read by a fitted model (reading), then the commands (inference,
    prediction, serve, demo, cli)

Only imports at module level count for cycles (an import inside a function is deferred on purpose);
every import, deferred or not, counts for the layer rules.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ctsurv"
BASE = {"errors", "outputs", "config"}
ALLOWED: dict[str, set[str]] = {  # package -> the packages it may import (besides itself and BASE)
    "text": set(),
    "io": set(),
    "synthetic": {"text", "io"},
    "models": {"text.questions", "text.findings"},
    "features": {"io", "models"},
    "evaluation": {"text", "io", "models"},
    "training": {"text", "io", "features", "models", "evaluation"},
    "inference": {"text", "io", "features", "models", "evaluation", "training"},
    "reading": {"text", "io", "features", "models", "evaluation", "training"},
    "prediction": {"text", "io", "features", "models", "evaluation", "training", "reading"},
    "serve": {"text", "io", "features", "models", "evaluation", "training", "reading"},
    "demo": {"text", "io", "synthetic", "features", "models", "evaluation", "training"},
    "cli": {"text", "io", "synthetic", "features", "models", "evaluation", "training", "inference", "prediction",
            "demo", "reading", "serve"},
}
NO_TORCH = ("text", "io", "synthetic")
HEAVY = {"torch", "monai", "transformers", "peft", "accelerate"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of ``path``, ``from X import y`` giving X.y when
    X.y is a module of ctsurv, else X."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, id(node) in top))
    return found


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _unit(module: str) -> str:
    """'ctsurv.text.questions' -> 'text'; 'ctsurv.cli' -> 'cli'."""
    return module.split(".")[1]


def _allowed(importer: str, imported: str) -> bool:
    unit, target = _unit(importer), _unit(imported)
    if target == unit or target in BASE:
        return True
    if unit in BASE:  # the base imports nothing above it
        return False
    name = imported.removeprefix("ctsurv.")
    return any(name == a or name.startswith(a + ".") for a in ALLOWED[unit])


LAYERED = sorted(m for m in MODULES if m not in ("ctsurv", "ctsurv.__main__"))


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in LAYERED}
    assert units <= set(ALLOWED) | BASE, f"a package or module without a layer: {units - set(ALLOWED) - BASE}"


@pytest.mark.parametrize("module", LAYERED)
def test_imports_go_down(module: str) -> None:
    ctsurv_imports = {name for name, _ in _imports(MODULES[module]) if name.startswith("ctsurv.")}
    upward = sorted(name for name in ctsurv_imports if not _allowed(module, name))
    assert not upward, f"{module} imports a layer above it: {upward}"


@pytest.mark.parametrize("module", [m for m in LAYERED if _unit(m) in NO_TORCH])
def test_data_layers_do_not_load_torch(module: str) -> None:
    heavy = {name for name, _ in _imports(MODULES[module]) if name.split(".")[0] in HEAVY}
    assert not heavy, f"{module} imports {sorted(heavy)}"


def test_module_graph_has_no_cycle() -> None:
    graph = {m: {n for n, top in _imports(MODULES[m]) if top and n in MODULES and n != m} for m in LAYERED}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_package_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for m in LAYERED:
        graph.setdefault(_unit(m), set()).update(
            _unit(n) for n, top in _imports(MODULES[m]) if top and n in MODULES and n != "ctsurv" and _unit(n) != _unit(m))
    graphlib.TopologicalSorter(graph).prepare()


def test_the_checks_can_fail() -> None:
    """The rules catch what they are for: models reaching into report parsing, text importing torch, a cycle."""
    assert not _allowed("ctsurv.models.vlm", "ctsurv.text.answers")
    assert not _allowed("ctsurv.models.vlm", "ctsurv.io.cohort")
    assert _allowed("ctsurv.models.vlm", "ctsurv.text.questions")
    assert not _allowed("ctsurv.io.cohort", "ctsurv.training.pretrain")
    assert _allowed("ctsurv.training.pretrain", "ctsurv.features.extract")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()
