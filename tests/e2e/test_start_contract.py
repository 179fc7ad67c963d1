"""The binary's `start`/`delete` contract, exercised the way containerd runs them, without one.

containerd runs `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID start` in the
bundle directory, reads stdout and stderr together, and dials what was printed exactly once.
These tests run the real console script the same way against a scratch bundle and talk to the
daemon it leaves behind with our ttrpc client (Connect, Shutdown), so each rule of the contract
is checked on its own: the printed address, stderr, the `address` file, reuse of a live shim,
replacement of a stale socket, stdin that holds anything, and `delete`'s binary answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from shim.api.containerd.task.v2 import shim_pb2
from shim.daemon import socket_address
from shim.ttrpc.client import Client
from tests.containerd import default_shim, stop_warm_runtime
from tests.prereq import require

NAMESPACE = "contract"
SERVICE = "containerd.task.v2.Task"


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Path]:
    require(os.geteuid() == 0, "start binds its socket under /run/containerd/s (root)")
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    (b / "config.json").write_text(
        json.dumps(
            {"process": {"args": ["/x.wasm"]}, "annotations": {}, "root": {"path": "rootfs"}}
        )
    )
    yield b
    stop_warm_runtime(str(b / "fake.sock"))  # the first `start` launched one


def _run(
    bundle: Path, cid: str, action: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    cmd = [str(default_shim()), "-namespace", NAMESPACE, "-address", str(bundle / "fake.sock")]
    cmd += ["-publish-binary", "/bin/false", "-id", cid]
    if action == "delete":
        cmd += ["-bundle", str(bundle)]
    env = {**os.environ, "TTRPC_ADDRESS": str(bundle / "fake.sock.ttrpc")}
    return subprocess.run(
        [*cmd, action],
        cwd=bundle,
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
        env=env,
    )


async def _connect_and_shutdown(address: str) -> shim_pb2.ConnectResponse:
    client = await Client.connect(address, timeout=5)
    try:
        reply = await client.call(
            SERVICE, "Connect", shim_pb2.ConnectRequest(id="x"), shim_pb2.ConnectResponse, timeout=5
        )
        await client.call(
            SERVICE, "Shutdown", shim_pb2.ShutdownRequest(id="x"), empty_pb2.Empty, timeout=5
        )
    finally:
        await client.close()
    return reply


def _processes_with(*args: str) -> list[int]:
    """Live processes whose argv contains `args` in a row (the daemon keeps start's argv)."""
    needle = b"\0".join(a.encode() for a in args) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _wait_gone(path: str, pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not os.path.exists(path) and not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon {pid} or socket {path} still there after Shutdown")


def test_start_prints_a_listening_address_and_writes_the_address_file(bundle: Path) -> None:
    # containerd 2.3+ writes a protobuf bootstrap message on stdin: whatever it is, no failure.
    result = _run(bundle, "c1", "start", stdin=b"\x0a\x03abc\xff\x00garbage")
    assert result.returncode == 0, result
    assert result.stderr == b""
    address = result.stdout.decode()
    expected = socket_address(str(bundle / "fake.sock"), NAMESPACE, "c1")
    assert address == expected and not address.endswith("\n")
    assert (bundle / "address").read_text() == address
    path = address[len("unix://") :]
    assert os.stat(path).st_mode & 0o777 == 0o600
    reply = asyncio.run(_connect_and_shutdown(address))
    assert reply.task_pid == 0 and reply.shim_pid > 0
    _wait_gone(path, reply.shim_pid)


def test_start_reuses_a_live_shim_of_the_same_group(bundle: Path) -> None:
    doc = json.loads((bundle / "config.json").read_text())
    doc["annotations"] = {"io.kubernetes.cri.sandbox-id": "pod-1"}
    (bundle / "config.json").write_text(json.dumps(doc))
    first = _run(bundle, "sandbox", "start")
    second = _run(bundle, "app", "start")
    assert first.returncode == second.returncode == 0, (first, second)
    address = first.stdout.decode()
    assert second.stdout.decode() == address
    assert address == socket_address(str(bundle / "fake.sock"), NAMESPACE, "pod-1")
    daemons = _processes_with("-id", "sandbox")  # the daemon and its spawner carry `-id <group>`
    assert daemons, "the first start left no daemon"
    assert _processes_with("-id", "app") == [], "the second start spawned a daemon of its own"
    reply = asyncio.run(_connect_and_shutdown(address))
    assert reply.shim_pid in daemons
    _wait_gone(address[len("unix://") :], reply.shim_pid)


def test_a_stale_socket_is_replaced(bundle: Path) -> None:
    address = socket_address(str(bundle / "fake.sock"), NAMESPACE, "c2")
    path = address[len("unix://") :]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a crashed shim leaves
    stale.close()
    result = _run(bundle, "c2", "start")
    assert result.returncode == 0 and result.stdout.decode() == address, result
    reply = asyncio.run(_connect_and_shutdown(address))
    _wait_gone(path, reply.shim_pid)


def test_delete_answers_a_binary_delete_response(bundle: Path) -> None:
    before = time.time_ns()
    result = _run(bundle, "gone", "delete")
    assert result.returncode == 0, result
    reply = shim_pb2.DeleteResponse.FromString(result.stdout)
    # containerd's contract, as the runc shim answers it: 128 + SIGKILL, no pid
    assert reply.exit_status == 137 and reply.pid == 0
    assert reply.exited_at.ToNanoseconds() >= before


def test_daemon_logs_to_the_bundle_log_fifo_with_the_container_id(bundle: Path) -> None:
    fifo = bundle / "log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # as containerd holds it
    try:
        result = _run(bundle, "logged", "start")
        assert result.returncode == 0, result
        reply = asyncio.run(_connect_and_shutdown(result.stdout.decode()))
        _wait_gone(result.stdout.decode()[len("unix://") :], reply.shim_pid)
        data = b""
        while chunk := _read_some(reader):
            data += chunk
    finally:
        os.close(reader)
    lines = data.decode().splitlines()
    assert any("serving the task API" in line for line in lines), lines
    assert lines and all(" id=logged " in line and line.startswith("time=") for line in lines)


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""
