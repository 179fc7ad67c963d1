"""`start`/`delete` pieces that need no containerd: the socket address, the hand-encoded
DeleteResponse, the pid file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim import manager
from shim.api.containerd.task.v2 import shim_pb2


def test_socket_address_is_containerds_formula() -> None:
    digest = hashlib.sha256(b"/run/containerd/containerd.sock/k8s.io/pod1").hexdigest()
    addr = manager.socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1")
    assert addr == f"unix:///run/containerd/s/{digest}"


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


def test_pid_file_detects_a_recycled_pid(tmp_path: Path) -> None:
    manager.write_pid_file(str(tmp_path), os.getpid())
    assert manager.read_pid_file(str(tmp_path)) == (os.getpid(), True)
    (tmp_path / manager.PID_FILE).write_text(f"{os.getpid()} 1")  # another start time
    assert manager.read_pid_file(str(tmp_path)) == (os.getpid(), False)
    (tmp_path / manager.PID_FILE).unlink()
    assert manager.read_pid_file(str(tmp_path)) == (0, False)


@pytest.mark.parametrize("garbage", ["", "x", "12 ", "-"])
def test_pid_file_garbage_is_no_process(tmp_path: Path, garbage: str) -> None:
    (tmp_path / manager.PID_FILE).write_text(garbage)
    _, alive = manager.read_pid_file(str(tmp_path))
    assert not alive
