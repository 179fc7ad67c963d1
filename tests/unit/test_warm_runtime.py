"""The warm runtime (shim/warm/) as a real process, without containerd: its lock, its control
socket, compile requests answered by forked jobs, hostile requests, retiring.

Each test runs a runtime for a containerd address of its own (a path under tmp_path), so the
runtimes of tests (and of other test sessions) never meet.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.base import CacheSettings, EntrypointKind
from shim import errors
from shim.warm import client, compiling, protocol
from shim.warm.identity import build_identity
from tests.containerd import stop_warm_runtime
from tests.prereq import require

REPO = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _run(address: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shim", "-address", address, "warm"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _ping(address: str) -> protocol.Message | None:
    try:
        return client.call(address, "ping", timeout=2)
    except client.Unreachable:
        return None


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    require(os.geteuid() == 0, "the warm runtime's control directory is root's")
    address = str(tmp_path / "containerd.sock")
    proc = _run(address)
    _wait_for(lambda: _ping(address) is not None)
    yield address, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    stop_warm_runtime(address)


def test_it_serves_on_a_root_only_socket_and_knows_its_build(
    warm: tuple[str, subprocess.Popen[bytes]],
) -> None:
    address, proc = warm
    sock = protocol.control_path(address)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(protocol.CONTROL_DIR).st_mode) == 0o700
    reply = _ping(address)
    assert reply is not None and reply.op == "ok"
    assert reply.get("pid") == str(proc.pid)
    assert reply.get("identity") == build_identity()
    assert Path(protocol.control_path(address, ".pid")).read_text() == str(proc.pid)


def test_a_second_runtime_for_the_same_containerd_exits_at_once(
    warm: tuple[str, subprocess.Popen[bytes]],
) -> None:
    address, proc = warm
    second = _run(address)
    assert second.wait(30) == 0
    reply = _ping(address)
    assert reply is not None and reply.get("pid") == str(proc.pid)


def _compile(address: str, program: Path, kind: EntrypointKind, cache: Path) -> object:
    fd = os.open(program, os.O_RDONLY)
    try:
        channel = compiling.request_compile(
            address, fd, kind, "/" + program.name, CacheSettings(str(cache), 1 << 30)
        )
    finally:
        os.close(fd)
    assert channel is not None
    try:
        return compiling.read_compile_reply(channel)
    except errors.ShimError as e:
        return e


def test_a_compile_request_is_answered_with_a_verified_entry_by_a_job(
    warm: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    address, proc = warm
    program = tmp_path / "m.wat"
    program.write_text('(module (func (export "_start")))')
    first = _compile(address, program, EntrypointKind.WAT, tmp_path / "cache")
    again = _compile(address, program, EntrypointKind.WAT, tmp_path / "cache")
    assert not isinstance(first, Exception) and not isinstance(again, Exception)
    assert first.path == again.path and first.note.startswith("compiled in ")  # type: ignore[attr-defined]
    assert again.note == ""  # type: ignore[attr-defined]
    assert Path(first.path).parent.parent == tmp_path / "cache"  # type: ignore[attr-defined]
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    _wait_for(lambda: not Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
    assert _ping(address) is not None, children  # the jobs are reaped, the runtime serves on


def test_an_invalid_program_is_answered_with_its_reason(
    warm: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    address, _ = warm
    program = tmp_path / "bad.wasm"
    program.write_bytes(b"\0asm\x01\0\0\0\x01\xff")
    answer = _compile(address, program, EntrypointKind.MODULE, tmp_path / "cache")
    assert isinstance(answer, errors.FailedPrecondition)
    assert "/bad.wasm is not a valid wasm module" in str(answer)


@pytest.mark.parametrize(
    "request_bytes",
    [b"", b"\xff\xfe", b"start\0no-equals-sign", b"launch-missiles", b"compile\0kind=module"],
)
def test_hostile_requests_get_an_error_and_the_runtime_stays_up(
    warm: tuple[str, subprocess.Popen[bytes]], request_bytes: bytes
) -> None:
    import socket

    address, proc = warm
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(protocol.control_path(address))
        s.send(request_bytes)
        if request_bytes:
            reply = protocol.decode(s.recv(protocol.MAX_MESSAGE))
            assert reply.op == "error" and reply.get("message")
    assert proc.poll() is None and _ping(address) is not None


@pytest.mark.parametrize(
    "config",
    [
        '{"annotations": [1]}',
        '{"annotations": "x"}',
        '{"annotations": {"io.kubernetes.cri.sandbox-id": 5}}',
        '["not", "an", "object"]',
        "{",
    ],
)
def test_a_start_with_a_malformed_config_json_is_its_own_group(
    warm: tuple[str, subprocess.Popen[bytes]], tmp_path: Path, config: str
) -> None:
    """The bundle is the one part of a start request no root process wrote for us to trust
    the shape of; the container's own id groups it (Create then refuses the spec)."""
    address, proc = warm
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(config)
    reply, group = _start_with_a_live_group(address, bundle)
    assert (reply.op, reply.get("address")) == ("ok", group)
    assert (bundle / "address").read_text() == group
    assert proc.poll() is None and _ping(address) is not None


def test_a_start_with_a_megabyte_of_environment_is_answered(
    warm: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """containerd's environment travels with every start (the daemon is forked with it)."""
    address, _ = warm
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    env = [("env", f"VAR_{i}={'x' * 1000}") for i in range(1000)]
    reply, group = _start_with_a_live_group(address, bundle, env)
    assert (reply.op, reply.get("address")) == ("ok", group)


def _start_with_a_live_group(
    address: str, bundle: Path, extra: list[tuple[str, str]] | None = None
) -> tuple[protocol.Message, str]:
    """A start of container c1 whose group's socket already listens (so no daemon is forked);
    the reply and that group's address."""
    import socket

    from shim.daemon import socket_address

    group = socket_address(address, "n", "c1")
    path = group.removeprefix("unix://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen(8)
        try:
            fields = [("identity", build_identity()), ("id", "c1"), ("namespace", "n")]
            fields += [("address", address), ("bundle", str(bundle)), *(extra or [])]
            return client.call(address, "start", fields), group
        finally:
            os.unlink(path)


def test_a_start_from_another_build_retires_it(
    warm: tuple[str, subprocess.Popen[bytes]],
) -> None:
    address, proc = warm
    reply = client.call(address, "start", [("identity", "0.0.0-other"), ("id", "x")])
    assert reply.op == "retire"
    assert proc.wait(10) == 0
    assert not os.path.exists(protocol.control_path(address))
    assert _ping(address) is None


def test_a_killed_runtimes_socket_is_replaced_by_the_next_one(
    warm: tuple[str, subprocess.Popen[bytes]],
) -> None:
    address, proc = warm
    proc.kill()
    proc.wait()
    assert os.path.exists(protocol.control_path(address))  # stale: nobody could remove it
    assert _ping(address) is None
    successor = _run(address)
    try:
        _wait_for(lambda: _ping(address) is not None)
        reply = _ping(address)
        assert reply is not None and reply.get("pid") == str(successor.pid)
    finally:
        successor.send_signal(signal.SIGTERM)
        assert successor.wait(10) == 0
