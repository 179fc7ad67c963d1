"""shim/ is only what containerd runs: importing all of shim/ and runtimes/ never loads the tool.

The user-facing tool (wasmtime_shim, under packaging/) depends on the shim; the reverse would
put the image builder, the node installer and their imports on the shim's path again. The
check runs in a fresh interpreter, because this test session has imported wasmtime_shim
already (the tool's own tests do): the child imports every module of both packages and
reports which modules of the tool ended up loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIM_PACKAGES = ("shim", "runtimes")
TOOL = "wasmtime_shim"

# argv: the tool's package name, then the packages to import in full.
CHILD = """
import importlib, json, pkgutil, sys
tool_name, *tops = sys.argv[1:]
imported = []
for top in tops:
    package = importlib.import_module(top)
    imported.append(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # importing it runs the shim
        importlib.import_module(info.name)
        imported.append(info.name)
tool = sorted(m for m in sys.modules if m == tool_name or m.startswith(tool_name + "."))
print(json.dumps({"imported": imported, "tool": tool}))
"""


def modules_on_disk(top: str) -> set[str]:
    """Every importable module of a package, by its files (the walk must not miss one)."""
    names = set()
    for path in (REPO / top).rglob("*.py"):
        if "__pycache__" in path.parts or path.name == "__main__.py":
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_every_shim_module_never_loads_the_tool() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, TOOL, *SHIM_PACKAGES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    expected = set().union(*(modules_on_disk(top) for top in SHIM_PACKAGES))
    assert set(report["imported"]) == expected
    assert "shim.oci.content" in report["imported"]  # the one shim module that reads images
    assert report["tool"] == [], f"the shim imported the tool: {report['tool']}"
