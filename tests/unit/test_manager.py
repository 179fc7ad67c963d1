"""`start`/`delete` pieces that need no containerd: the flags, the socket address, the
hand-encoded DeleteResponse, the held record and what `delete` undoes from it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim import bundle, cleanup, cli, manager
from shim.api.containerd.task.v2 import shim_pb2
from shim.daemon import socket_address
from shim.options import ShimOptions


def test_socket_address_is_containerds_formula() -> None:
    digest = hashlib.sha256(b"/run/containerd/containerd.sock/k8s.io/pod1").hexdigest()
    addr = socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1")
    assert addr == f"unix:///run/containerd/s/{digest}"


@pytest.mark.parametrize(
    ("argv", "values", "bools", "action"),
    [
        (
            [
                "-namespace",
                "k8s.io",
                "-address",
                "/a.sock",
                "-publish-binary",
                "/b",
                "-id",
                "x",
                "start",
            ],
            {"namespace": "k8s.io", "address": "/a.sock", "publish-binary": "/b", "id": "x"},
            set(),
            "start",
        ),
        (
            ["--id=y", "-debug", "-bundle", "/b1", "delete"],
            {"id": "y", "bundle": "/b1"},
            {"debug"},
            "delete",
        ),
        (["-debug=false", "-unknown", "-v"], {}, {"v"}, None),
        (["-future-flag=1", "-id", "z", "start", "extra"], {"id": "z"}, set(), "start"),
    ],
)
def test_go_style_flags(
    argv: list[str], values: dict[str, str], bools: set[str], action: str | None
) -> None:
    assert cli.parse(argv) == (values, bools, action)


HEAVY = ("asyncio", "google.protobuf", "wasmtime", "json", "argparse", "dataclasses", "socket")


def test_start_and_delete_paths_import_nothing_heavy(tmp_path: Path) -> None:
    """What `start` (with a warm runtime) and `delete` (no record) load: only light modules;
    `python -X importtime` of both is in bench/start_delete.py's output."""
    code = (
        "import sys; from shim import cli, manager; cli.main(['-v']);"
        f"manager.delete(manager.ShimOptions(namespace='n', address='/x', publish_binary='',"
        f" id='c', bundle={str(tmp_path)!r}, debug=False));"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert "Runtime:  io.containerd.wasmtime.v1" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


@given(
    pid=st.integers(0, 2**32 - 1),
    status=st.integers(0, 2**32 - 1),
    ns=st.integers(0, 2**62),
)
def test_delete_response_matches_protobuf(pid: int, status: int, ns: int) -> None:
    expected = shim_pb2.DeleteResponse(pid=pid, exit_status=status)
    expected.exited_at.FromNanoseconds(ns)
    assert manager.delete_response(pid, status, ns) == expected.SerializeToString()
    decoded = shim_pb2.DeleteResponse.FromString(manager.delete_response(pid, status, ns))
    assert (decoded.pid, decoded.exit_status, decoded.exited_at.ToNanoseconds()) == (
        pid,
        status,
        ns,
    )


def test_held_record_round_trip_and_empty_removes_it(tmp_path: Path) -> None:
    held = {"rootfs": "/b/rootfs", "cgroup": "/default/c1", "pid": "42 1234"}
    bundle.write_held(str(tmp_path), held)
    assert bundle.read_held(str(tmp_path)) == held
    bundle.write_held(str(tmp_path), {})
    assert not (tmp_path / bundle.HELD_FILE).exists()
    assert bundle.read_held(str(tmp_path)) == {}


def test_held_record_refuses_what_it_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        bundle.write_held(str(tmp_path), {"rootfs": "/a\nb"})


def _opts(tmp_path: Path) -> ShimOptions:
    return ShimOptions(
        namespace="default",
        address="/x.sock",
        publish_binary="",
        id="c1",
        bundle=str(tmp_path),
        debug=False,
    )


def test_delete_without_a_record_does_nothing_and_answers_137(tmp_path: Path) -> None:
    out = manager.delete(_opts(tmp_path))
    decoded = shim_pb2.DeleteResponse.FromString(out)
    assert (decoded.pid, decoded.exit_status) == (0, 137)
    assert decoded.exited_at.ToNanoseconds() > 0


def test_cleanup_kills_the_recorded_process_but_never_a_recycled_pid(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        # A start time that is not the process's: the pid was recycled, leave it alone.
        held = {bundle.PID: f"{victim.pid} 1"}
        assert cleanup.undo(_opts(tmp_path), str(tmp_path), held) == victim.pid
        assert victim.poll() is None
        held = {bundle.PID: f"{victim.pid} {bundle.start_time(victim.pid)}"}
        bundle.write_held(str(tmp_path), held)
        cleanup.undo(_opts(tmp_path), str(tmp_path), held)
        assert victim.wait(timeout=5) == -signal.SIGKILL
        assert bundle.read_held(str(tmp_path)) == {}  # the record goes once undone
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_start_time_names_one_process() -> None:
    assert bundle.start_time(os.getpid()).isdigit()
    assert bundle.start_time(2**22 + 12345) == ""


def test_a_failed_unmount_fails_delete_after_every_other_step_and_keeps_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from shim.errors import Internal
    from shim.oci import mounts

    def refuse(target: str) -> int:
        raise Internal(f"unmount {target}: Device or resource busy")

    monkeypatch.setattr(mounts, "unmount_all", refuse)
    dead = tmp_path / "dead.sock"  # a pod daemon's socket whose daemon died
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))
    (tmp_path / "address").write_text(f"unix://{dead}")
    held = {bundle.ROOTFS: str(tmp_path / "rootfs")}
    bundle.write_held(str(tmp_path), held)
    with pytest.raises(Internal, match="resource busy"):
        cleanup.undo(_opts(tmp_path), str(tmp_path), held)
    assert not dead.exists()  # the later step ran
    assert bundle.read_held(str(tmp_path)) == held  # for containerd's next delete
