"""The import graph of shim/ and runtimes/: layered, without cycles, every module importable
on its own.

Each module's module-level imports (not those inside functions, which are how a light
command defers a heavy dependency, and not TYPE_CHECKING ones) must point at its own layer or
a lower one in LAYERS; the graph must have no cycle; and each module must import in an
interpreter that has loaded no other module of the project (one subprocess imports them one
by one, clearing the project's modules before each).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("shim", "shim.errors", "shim.options", "shim.libc", "shim.api")),
    (
        "start and delete (standard library only)",
        (
            "shim.bundle",
            "shim.warm",
            "shim.warm.protocol",
            "shim.warm.identity",
            "shim.warm.client",
            "shim.warm.launch",
            "shim.manager",
            "shim.cli",
            "shim.__main__",
        ),
    ),
    ("engine interface", ("runtimes", "runtimes.base")),
    (
        "host resources",
        (
            "shim.logs",
            "shim.proctitle",
            "shim.oci",
            "shim.cgroups",
            "shim.confine",
            "shim.io",
            "shim.ttrpc",
            "shim.events",
        ),
    ),
    ("the engine", ("runtimes.wasmtime",)),
    ("processes", ("shim.warm.compiling", "shim.proc")),
    ("tasks", ("shim.task",)),
    ("daemon", ("shim.serve", "shim.daemon", "shim.cleanup")),
    ("warm runtime", ("shim.warm.server", "shim.warm.boot")),
]


def layer_of(module: str) -> int:
    best, rank = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, i
    assert rank >= 0, f"{module} is in no layer of LAYERS"
    return rank


def modules() -> dict[str, Path]:
    found = {}
    for top in ("shim", "runtimes"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            name = ".".join(parts)
            if not name.startswith("shim.api"):
                found[name] = path
    return found


def module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules `path` imports when it is imported."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        if target.split(".")[0] in ("shim", "runtimes") and not target.startswith("shim.api"):
            out.add(target)

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    add(candidate if candidate in known else base)
            elif isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: module_level_imports(path, name, set(mods)) for name, path in mods.items()}


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_go_to_the_same_or_a_lower_layer(module: str) -> None:
    mine = layer_of(module)
    for target in sorted(graph()[module]):
        assert layer_of(target) <= mine, (
            f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        )


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])


def test_every_module_imports_on_its_own() -> None:
    names = sorted(n for n in modules() if n != "shim.__main__")
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('shim', 'runtimes')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        f"print('ok', {len(names)})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok {len(names)}"


def test_an_upward_import_is_found_even_deferred_only_by_an_if(tmp_path: Path) -> None:
    """The rule can fail: a foundation module importing the task layer at module level is
    seen (also under an `if`, and through a relative import); one inside a function is not."""
    source = tmp_path / "fake.py"
    source.write_text(
        "import os\nif os.name:\n    from .task import tasks\ndef later():\n    import shim.serve\n"
    )
    found = module_level_imports(source, "shim.libc", set(modules()))
    assert found == {"shim.task.tasks"}
    assert layer_of("shim.task.tasks") > layer_of("shim.libc")
