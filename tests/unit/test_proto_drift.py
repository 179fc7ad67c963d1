"""The committed shim/api/ must be exactly what proto/regen.py makes from proto/.

Someone who edits a .proto file and forgets to regenerate (or hand-edits a generated module)
gets a failure here naming the files, instead of a shim whose wire format silently disagrees
with its own sources.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.prereq import needs

ROOT = Path(__file__).resolve().parents[2]
REGEN = ROOT / "proto" / "regen.py"

pytestmark = needs(
    importlib.util.find_spec("grpc_tools") is not None,
    "grpcio-tools (a dev dependency) is not installed",
)


def _load_regen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_regen", REGEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_api_matches_regeneration() -> None:
    result = subprocess.run(
        [sys.executable, str(REGEN), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, (
        "shim/api/ differs from what proto/regen.py generates; run "
        f"`.venv/bin/python proto/regen.py` and commit.\n{result.stdout}{result.stderr}"
    )


def test_check_names_a_changed_file_and_a_missing_one(tmp_path: Path) -> None:
    """The comparison itself must notice drift, or the test above proves nothing."""
    regen = _load_regen()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    regen.generate(fresh)
    committed = tmp_path / "committed"
    shutil.copytree(fresh, committed)
    assert regen.diff(fresh, committed) == []

    mount = committed / "containerd" / "types" / "mount_pb2.py"
    mount.write_text(mount.read_text() + "# hand edit\n")
    (committed / "ttrpc" / "request_pb2.py").unlink()
    (committed / "containerd" / "stale_pb2.py").write_text("")

    assert regen.diff(fresh, committed) == [
        "containerd/stale_pb2.py",
        "containerd/types/mount_pb2.py",
        "ttrpc/request_pb2.py",
    ]


def test_generated_imports_are_absolute_within_shim_api(tmp_path: Path) -> None:
    regen = _load_regen()
    regen.generate(tmp_path)
    request = (tmp_path / "ttrpc" / "request_pb2.py").read_text()
    assert "from shim.api.google.rpc import status_pb2" in request
    shim = (tmp_path / "containerd" / "task" / "v2" / "shim_pb2.py").read_text()
    assert "from shim.api.containerd.types import mount_pb2" in shim
    assert "from shim.api.containerd.types.task import task_pb2" in shim
    # The well-known types come from the protobuf runtime, not from us.
    assert "from google.protobuf import timestamp_pb2" in shim
    for init in [tmp_path, *(p for p in tmp_path.rglob("*") if p.is_dir())]:
        assert (init / "__init__.py").is_file(), init
