"""The layout keeps data flowing one way (STYLE #1, #4b): no import circle anywhere, the engine imports neither
the solvers nor the calibration, the library never loads Hydra or MLflow, and no module grows past 400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flexgnn_core", "baselines", "harness", "bench")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (at module level or inside functions: a lazy import is still an
    arrow). ``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_anywhere():
    graph = import_graph()
    assert len(graph) > 40 and graph["flexgnn_core.system"] >= {"flexgnn_core.engine", "flexgnn_core.calibrate"}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _loaded_after(statement: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"import sys; {statement}; print('\\n'.join(sys.modules))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_the_engine_loads_neither_solvers_nor_calibration_and_the_library_no_hydra_or_mlflow():
    loaded = _loaded_after("import flexgnn_core.engine")
    assert not {m for m in loaded if m.startswith(("flexgnn_core.plan.solvers", "flexgnn_core.calibrate"))}
    assert "flexgnn_core.engine.executor" in loaded
    everything = _loaded_after("import flexgnn_core.system, flexgnn_core.data, baselines.pyg_fullgraph")
    assert not {m for m in everything if m.split(".")[0] in ("hydra", "mlflow", "omegaconf")}


@pytest.mark.parametrize("path", sorted(p for package in PACKAGES + ("tests",) for p in (ROOT / package).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400
