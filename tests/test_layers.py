"""The shape of the house: dependencies point one way and no module imports itself in a circle.

The layers (``docs/architecture.md``): curvtools' core and its theory commands import nothing
from harness or paper_figs; only the commands that rebuild a trained model (``curvtools hessian``,
``curvtools lemma``) reach into harness, lazily, inside the command. harness imports nothing from
paper_figs; paper_figs reads run directories and imports nothing from harness. The graph is read
from the source with ``ast`` (every import, at module level or inside a function).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curvtools", "harness", "paper_figs")
# curvtools modules that rebuild trained models from checkpoints: they may import harness, but
# only inside functions (importing the module itself must not load harness)
CURVTOOLS_MODEL_COMMANDS = ("curvtools.cli_hessian", "curvtools.cli_lemma", "curvtools.testset")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (None outside the project)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """``(imported project module, at module level?)`` for every import statement."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    # imports under `if TYPE_CHECKING:` never run
    typing_only = {id(n) for node in tree.body if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            target = _target(name, known)
            if target is not None and target != module:
                out.append((target, id(node) in top_level))
    return out


GRAPH = {m: _imports(m, p, _modules()) for m, p in _modules().items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_was_read():
    assert "harness.train" in GRAPH and "curvtools.activations" in GRAPH
    assert ("harness.step", True) in GRAPH["harness.train"]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "curvtools"))
def test_curvtools_imports_nothing_above_it(module):
    bad = [(t, top) for t, top in GRAPH[module] if _layer(t) != "curvtools"]
    if module in CURVTOOLS_MODEL_COMMANDS:
        bad = [(t, top) for t, top in bad if top or _layer(t) != "harness"]
    assert not bad, f"{module} imports {bad} (curvtools is the bottom layer)"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "harness"))
def test_harness_imports_nothing_from_paper_figs(module):
    bad = [t for t, _ in GRAPH[module] if _layer(t) == "paper_figs"]
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "paper_figs"))
def test_paper_figs_reads_run_directories_not_harness(module):
    bad = [t for t, _ in GRAPH[module] if _layer(t) == "harness"]
    assert not bad, f"{module} imports {bad}"


def _cycle() -> list[str] | None:
    """One import circle among project modules (any import, lazy ones too), or None."""
    edges = {m: sorted({t for t, _ in targets}) for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, []):
            # a package's __init__ importing its own submodules is how packages are built
            if t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circles():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_cycle_finder_finds_a_planted_circle(monkeypatch):
    monkeypatch.setitem(GRAPH, "curvtools.errors", [*GRAPH["curvtools.errors"],
                                                    ("curvtools.activations", False)])
    assert _cycle() is not None


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) != "paper_figs"))
def test_no_module_is_over_500_lines(module):
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= 500, f"{module} has {lines} lines"
