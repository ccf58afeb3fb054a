"""The package's import graph: no cycles, and the pure layers never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "interp_assert"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any level of the file, lazily or not)."""
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = file
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, file in modules.items():
        for node in ast.walk(ast.parse(file.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_properties_and_fingerprints_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import interp_assert.spec, interp_assert.properties\n"
        "import interp_assert.drift.fingerprint, interp_assert.drift.drift_summary\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# Layers, lowest first: a module may import only from its own layer or below, at its top level or
# inside a function alike (a lazy import is still a dependency, and a folder loop can hide in one).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "interp_assert",
        "errors",
        "outcome",
        "evaluation",
        "vocab",
        "version",
        "atomic",
        "strict",
        "trust",
        "private_files",
        "exit_codes",
        "output_schema",
        "option_table",
    ),
    (  # torch-free data and checks
        "measure",
        "measure.measurements",
        "measure.head_tables",
        "measure.loading.hub",
        "measure.loading.placement",
        "measure.prompt_sets",
        "measure.pair_requests",
        "measure.probe_math",
    ),
    ("measure.*",),  # loading, attention paths, capture and what it runs
    ("drift", "figures"),  # the pure snapshot layer and the pictures: numbers in, files out
    ("properties",),
    ("spec",),
    ("run_options", "runner", "api", "result_cache"),
    ("pytest_plugin", "commands"),
)


def layer_of(module: str) -> int:
    """A module's layer: named exactly, else under a ``folder.*`` entry, else inside a named folder."""
    name = module.removeprefix("interp_assert").removeprefix(".") or "interp_assert"
    for matches in (
        lambda entry: name == entry,
        lambda entry: entry.endswith(".*") and name.startswith(entry[:-1]),
        lambda entry: name.startswith(entry + "."),
    ):
        for rank, entries in enumerate(LAYERS):
            if any(matches(entry) for entry in entries):
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_imports_go_down_the_layers() -> None:
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    upward = []
    for name, file in sorted(modules.items()):
        for node in ast.walk(ast.parse(file.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("interp_assert"):
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("interp_assert")]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and layer_of(target) > layer_of(name):
                    upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_every_error_lives_in_errors_py() -> None:
    """One error story: each of the package's errors is a documented class in ``errors.py``."""
    import importlib

    from interp_assert.errors import InterpAssertError

    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    found, pending = [], [InterpAssertError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    ours = [cls for cls in found if cls.__module__.startswith("interp_assert")]
    assert len(ours) >= 10
    assert [f"{c.__module__}.{c.__name__}" for c in ours if c.__module__ != "interp_assert.errors"] == []
    assert all(cls.__doc__ for cls in ours)
