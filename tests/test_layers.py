"""The shape of the package (docs/design.md, "Layers"): no import cycle counting function-level
imports, every import points to the same layer or below, the core imports nothing of the ML
stack, and a pytest session with the plugin that collects no suite stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "harness"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (
        "harness",
        "harness._util",
        "harness.schema",
        "harness.numerics",
        "harness.metricnames",
        "harness.edgesets",
        "harness.spec",
        "harness.results",
        "harness.provenance",
        "harness.shard",
        "harness.fronts",
    ),
    "ml parts": (
        "harness._child",
        "harness.devices",
        "harness.data",
        "harness.data.registry",
        "harness.data.folds",
        "harness.data.split",
        "harness.data.stream",
        "harness.data.edge",
        "harness.inputs",
        "harness.models",
        "harness.training",
        "harness.pruning",
        "harness.pruning.*",
        "harness.metrics",
        "harness.energy",
        "harness.power",
        "harness.deploy",
        "harness.checks",
        "harness.stats",
        "harness.cache",
    ),
    "resolution": ("harness.resolution",),
    "running": ("harness.runner", "harness.executors", "harness.executors.*"),
    "judging": ("harness.baseline", "harness.gate"),
    "output": ("harness.tracking", "harness.report"),
    "session": ("harness.session", "harness.base"),
    "faces": ("harness.plugin", "harness.cli"),
}
ML_STACK = ("torch", "torch_pruning", "captum", "sklearn", "scipy", "numpy", "mlflow", "pytest")
# The only lazy ML import the core makes: provenance reads torch's version and build when a
# result's environment is recorded.
CORE_EXCEPTIONS = {("harness.provenance", "torch")}
# One adapter per outside system: pytest only in the plugin, MLflow only in tracking.
OWNERS = {"pytest": {"harness.plugin"}, "mlflow": {"harness.tracking"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(harness modules, outside top-level packages) that ``name`` imports anywhere in its code,
    function-level imports included, ``TYPE_CHECKING`` blocks excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        for target in targets:
            if target in known:
                if target != name:
                    inside.add(target)
            elif target.split(".")[0] != "harness":
                outside.add(target.split(".")[0])
    return inside, outside


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    inside, outside = {}, {}
    for name, path in modules.items():
        inside[name], outside[name] = _imports(name, path, set(modules))
    return inside, outside


def _layer(name: str) -> int:
    for i, members in enumerate(LAYERS.values()):
        for member in members:
            if name == member or (member.endswith(".*") and name.startswith(member[:-1])):
                return i
    raise AssertionError(f"{name} is in no layer of LAYERS: add it where it belongs")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_counting_function_level_imports() -> None:
    inside, _ = _graph()
    assert _cycles(inside) == []


def test_the_cycle_finder_finds_a_lazy_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_import_points_to_its_own_layer_or_below() -> None:
    inside, _ = _graph()
    upward = [
        f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
        for name, targets in sorted(inside.items())
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert upward == []


def test_the_core_imports_nothing_of_the_ml_stack() -> None:
    _, outside = _graph()
    core = [m for m in outside if _layer(m) == 0]
    assert "harness.spec" in core and "harness.results" in core
    heavy = [
        f"{name} imports {package}"
        for name in sorted(core)
        for package in sorted(outside[name])
        if package in ML_STACK and (name, package) not in CORE_EXCEPTIONS
    ]
    assert heavy == []


def test_pytest_and_mlflow_each_have_one_adapter() -> None:
    _, outside = _graph()
    for package, owners in OWNERS.items():
        users = {name for name, packages in outside.items() if package in packages}
        assert users == owners, f"{package} imported by {sorted(users - owners)}"


def test_the_walk_sees_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import torch
                from harness.runner import CaseResult
            def f():
                import sklearn
                from harness import spec
            """
        )
    )
    inside, outside = _imports("harness.mod", path, {"harness.spec", "harness.runner"})
    assert inside == {"harness.spec"}
    assert "sklearn" in outside and "torch" not in outside


def test_importing_the_public_api_stays_light() -> None:
    code = (
        "import sys, harness; from harness import load_suite, SuiteSpec, evaluate, Verdict; "
        "from harness.spec import load_suite as ls; import glob; "
        "[ls(p) for p in sorted(glob.glob('suites/*.toml'))]; "
        "heavy = [m for m in ('torch', 'mlflow', 'sklearn', 'numpy', 'scipy') if m in sys.modules];"
        " print(heavy); sys.exit(1 if heavy else 0)"
    )
    root = PACKAGE.parent
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_session_that_collects_no_suite_imports_no_ml_stack(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert 1 + 1 == 2\n")
    pytester.makeconftest(
        textwrap.dedent(
            """
            import sys

            def pytest_sessionfinish(session):
                heavy = [m for m in ("torch", "mlflow", "sklearn") if m in sys.modules]
                with open("heavy.txt", "w") as out:
                    out.write(",".join(heavy))
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly")  # the plugin: an entry point
    result.assert_outcomes(passed=1)
    assert "prune-harness: numerics" in result.stdout.str()  # the plugin was active
    assert (pytester.path / "heavy.txt").read_text() == ""


def test_every_public_name_resolves_to_its_module() -> None:
    import importlib

    import harness

    for name in harness.__all__:
        module = importlib.import_module(harness._EXPORTS[name])
        assert getattr(harness, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        harness.nope  # noqa: B018
