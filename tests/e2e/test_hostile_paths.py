"""What a client or a spec names cannot make the shim wait, nor make it hold memory without
bound: through the real containerd, ``ctr`` and raw ttrpc on the shim's own socket.

- A ``linux.namespaces`` path that is a FIFO (``ctr run --with-ns network:<fifo>``) and a
  ``file://`` log URI that is a FIFO (``ctr run --log-uri file://<fifo>``) each fail Create
  within seconds, naming the path and the reason; twenty in a row leave the pod's shim
  serving, and the next container in that same shim runs.
- Fifty connections that each send half of a 4 MiB frame and stop are refused
  (RESOURCE_EXHAUSTED) or closed; the shim daemon's peak RSS grows by no more than the
  bound README documents, and the shim still answers a normal call afterwards.

Every container of a test shares one shim: they carry the same pod annotation
(``io.kubernetes.cri.sandbox-id``), and a long-running "holder" keeps that shim alive
between the failures.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shim.api.containerd.task.v2 import shim_pb2
from shim.api.containerd.types.task import task_pb2 as types_pb2
from shim.api.ttrpc import request_pb2
from shim.errors import Code
from shim.ttrpc import NAMESPACE_KEY, Client
from shim.ttrpc.client import socket_path
from shim.ttrpc.frames import MAX_PAYLOAD, FrameType, encode_header
from shim.ttrpc.limits import Limits
from tests.containerd import TASK_PLUGIN_DIR, PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    ctr_run,
    describe,
    make_image,
    remove_container,
    wait_for_status,
)
from wasmtime_shim.images.build import ImageConfig

IMAGE = "docker.io/library/e2e-hostile-paths:latest"
POD_ANNOTATION = "io.kubernetes.cri.sandbox-id"
ATTEMPTS = 20
FAST = 10.0  # seconds one refused `ctr run` may take, all of ctr's own work included
TASK_SERVICE = "containerd.task.v2.Task"
MIB = 1 << 20
PEERS = 50
SOCKET_BUFFERS = MIB  # README: each connection's buffers stay under 1 MiB
RELEASED_SLACK = 3 * MIB  # what the interpreter may keep of 50 connections' objects


@pytest.fixture(scope="module")
def test_image(
    build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> TestImage:
    files = {f"/{name}.wasm": build_wasm(name) for name in ("hello", "sleep")}
    config = ImageConfig(entrypoint=("/hello.wasm",))
    return make_image(tmp_path_factory.mktemp("hostile"), files, ref=IMAGE, config=config)


@pytest.fixture
def image(containerd: PrivateContainerd, ns: str, test_image: TestImage) -> str:
    return test_image.import_into(containerd, ns)


@pytest.fixture
def holder(containerd: PrivateContainerd, ns: str, image: str) -> Iterator[str]:
    """A sleeping container of the pod ``<ns>-pod``: its shim serves the whole test."""
    cid = f"{ns}-holder"
    result = ctr_run(
        containerd,
        ns,
        image,
        "/sleep.wasm",
        "600",
        container_id=cid,
        rm=False,
        flags=("-d", "--null-io", "--annotation", f"{POD_ANNOTATION}={ns}-pod"),
    )
    assert result.returncode == 0, describe(containerd, result)
    try:
        wait_for_status(containerd, ns, cid, "RUNNING")
        yield cid
    finally:
        remove_container(containerd, ns, cid)


def daemons(containerd: PrivateContainerd, ns: str) -> list[int]:
    """The pod daemons serving ``ns``: shim processes of our containerd in that namespace,
    not the warm runtime, and not forked from another of them (spawners, containers)."""
    shims: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        pairs = set(itertools.pairwise(argv))
        ours = ("-address", str(containerd.address)) in pairs and ("-namespace", ns) in pairs
        if ours and "warm" not in argv:
            shims[int(proc.name)] = ppid
    return sorted(pid for pid, ppid in shims.items() if ppid not in shims)


def refused_runs(
    containerd: PrivateContainerd, ns: str, image: str, flags: tuple[str, ...]
) -> list[str]:
    """``ATTEMPTS`` runs in the pod with ``flags``; each must fail within FAST seconds.
    Returns ctr's stderr of each."""
    errors = []
    for i in range(ATTEMPTS):
        started = time.monotonic()
        result = ctr_run(
            containerd,
            ns,
            image,
            "/hello.wasm",
            container_id=f"{ns}-bad-{i}",
            flags=("--annotation", f"{POD_ANNOTATION}={ns}-pod", *flags),
            timeout=60,
        )
        took = time.monotonic() - started
        assert result.returncode != 0, describe(containerd, result)
        assert took < FAST, f"run {i} took {took:.1f}s\n" + describe(containerd, result)
        errors.append(result.stderr)
    return errors


def assert_the_pod_shim_runs_the_next_container(
    containerd: PrivateContainerd, ns: str, image: str, daemon: int
) -> None:
    assert daemons(containerd, ns) == [daemon]
    result = ctr_run(
        containerd,
        ns,
        image,
        "/hello.wasm",
        "7",
        container_id=f"{ns}-next",
        flags=("--annotation", f"{POD_ANNOTATION}={ns}-pod"),
    )
    assert result.returncode == 7, describe(containerd, result)
    assert "argv[1]=7" in result.stdout, describe(containerd, result)
    assert daemons(containerd, ns) == [daemon]  # the same shim ran it


def test_a_fifo_namespace_path_fails_create_at_once_and_the_shim_goes_on(
    containerd: PrivateContainerd, ns: str, image: str, holder: str, tmp_path: Path
) -> None:
    (daemon,) = daemons(containerd, ns)
    fifo = tmp_path / "netns.fifo"
    os.mkfifo(fifo)

    errors = refused_runs(containerd, ns, image, ("--with-ns", f"network:{fifo}"))

    for stderr in errors:
        assert f"the network namespace path '{fifo}' is a FIFO" in stderr, stderr
        assert "not a namespace file" in stderr and "invalid argument" in stderr, stderr
    assert_the_pod_shim_runs_the_next_container(containerd, ns, image, daemon)


@pytest.mark.parametrize("reader", [False, True], ids=["unread", "read"])
def test_a_fifo_log_uri_fails_create_at_once_and_the_shim_goes_on(
    containerd: PrivateContainerd,
    ns: str,
    image: str,
    holder: str,
    tmp_path: Path,
    reader: bool,
) -> None:
    (daemon,) = daemons(containerd, ns)
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    # With a reader, opening the FIFO would succeed: only the check of what it is refuses it.
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else -1
    try:
        errors = refused_runs(containerd, ns, image, ("--log-uri", f"file://{fifo}"))
    finally:
        if held >= 0:
            os.close(held)

    for stderr in errors:
        assert f"log file '{fifo}' is a FIFO, not a regular file" in stderr, stderr
        assert "invalid argument" in stderr, stderr
    assert_the_pod_shim_runs_the_next_container(containerd, ns, image, daemon)


# ------------------------------------------------------------------ ttrpc memory


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def half_frame_peer(path: str) -> socket.socket | None:
    """Connect and send the header of a 4 MiB request and the first half of its payload.
    None when the shim closed the connection before it took it all (past its limit)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(path)
        sock.sendall(encode_header(MAX_PAYLOAD, 1, FrameType.REQUEST) + bytes(MAX_PAYLOAD // 2))
    except (ConnectionError, BrokenPipeError):
        sock.close()
        return None
    return sock


def outcome(sock: socket.socket, timeout: float) -> int | None:
    """The status code of the shim's answer on stream 1, or None once it closed on us."""
    sock.settimeout(timeout)
    data = b""
    try:
        while len(data) < 10 or len(data) < 10 + struct.unpack(">I", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except ConnectionError:
        return None
    length, stream_id, type_, _ = struct.unpack(">IIBB", data[:10])
    assert (stream_id, type_) == (1, FrameType.RESPONSE), data
    return request_pb2.Response.FromString(data[10 : 10 + length]).status.code


def settled_rss(pid: int, target_kib: int, timeout: float = 10.0) -> int:
    """VmRSS once it is at most ``target_kib`` (the shim has let go), or when ``timeout``
    passes (then the caller's assertion reports it)."""
    deadline = time.monotonic() + timeout
    while (rss := status_kib(pid, "VmRSS")) > target_kib and time.monotonic() < deadline:
        time.sleep(0.1)
    return rss


def shim_address(containerd: PrivateContainerd, ns: str, cid: str) -> str:
    """The ttrpc socket of the shim serving ``cid`` (its bundle's ``address`` file)."""
    address = (containerd.state / TASK_PLUGIN_DIR / ns / cid / "address").read_text()
    return socket_path(address.strip())


async def task_state(path: str, ns: str, cid: str) -> shim_pb2.StateResponse:
    async with await Client.connect(path, timeout=10) as client:
        return await client.call(
            TASK_SERVICE,
            "State",
            shim_pb2.StateRequest(id=cid),
            shim_pb2.StateResponse,
            timeout=10,
            metadata={NAMESPACE_KEY: ns},
        )


def test_fifty_half_sent_frames_are_bounded_and_the_shim_still_answers(
    containerd: PrivateContainerd, ns: str, holder: str
) -> None:
    (daemon,) = daemons(containerd, ns)
    path = shim_address(containerd, ns, holder)
    limits = Limits()
    before = status_kib(daemon, "VmRSS")
    Path(f"/proc/{daemon}/clear_refs").write_text("5")  # VmHWM := VmRSS: a fresh peak
    peers = [half_frame_peer(path) for _ in range(PEERS)]
    # The frames the shim admitted are dropped once their deadline passes.
    outcomes = [
        None if sock is None else outcome(sock, limits.frame_timeout + 20) for sock in peers
    ]
    peak = status_kib(daemon, "VmHWM")
    for sock in peers:
        if sock is not None:
            sock.close()
    after = settled_rss(daemon, before + (RELEASED_SLACK >> 10))

    assert set(outcomes) <= {None, Code.RESOURCE_EXHAUSTED}, outcomes
    # Past max_connections (containerd holds one) the shim closes at once; of the others,
    # those whose frame does not fit are answered, those it admitted are dropped later.
    assert outcomes.count(None) >= PEERS - limits.max_connections, outcomes
    assert outcomes.count(Code.RESOURCE_EXHAUSTED) > 0, outcomes
    grown = (peak - before) << 10
    # README's bound: the charged requests plus each connection's socket buffers.
    bound = limits.server_bytes + limits.max_connections * SOCKET_BUFFERS
    assert grown <= bound, f"the shim grew by {grown / MIB:.1f} MiB, over {bound / MIB:.0f} MiB"
    kept = (after - before) << 10  # the admitted frames' pages went back to the kernel
    assert kept <= RELEASED_SLACK, f"{kept / MIB:.1f} MiB still held after the peers left"
    state = asyncio.run(task_state(path, ns, holder))
    assert state.id == holder and state.status == types_pb2.RUNNING, state
    assert daemons(containerd, ns) == [daemon]
