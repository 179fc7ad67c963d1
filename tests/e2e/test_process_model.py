"""The process model (README "Processes") through the real containerd and ctr, for the venv's
script and the shipped PyInstaller bundle alike: the warm runtime can die or be replaced at
any time without touching a running container, a pod's spawner that dies is replaced while
its containers run on, containerd can restart, a container whose
program never gets ready stays killable, a damaged cache entry costs a recompile, and
hundreds of lifecycles leave nothing behind.

Each test uses a namespace of its own on a containerd of its shim's kind (session-scoped:
the venv's is conftest's `containerd`; the bundle's is started here), and checks for leaks
as conftest's `ns` fixture does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtimes.base import EntrypointKind
from runtimes.wasmtime.engine import load_source
from shim.warm import client
from tests.conftest import _empty_namespace
from tests.containerd import PrivateContainerd, alive
from tests.e2e.helpers import (
    TestImage,
    ctr_popen,
    ctr_run,
    describe,
    make_image,
    run_args,
    salted,
    task_pid,
    task_status,
    wait_for_status,
    wat_binary,
)
from wasmtime_shim.images.build import ImageConfig

IMAGE = "docker.io/library/e2e-process-model:latest"
GROUP = "io.containerd.runc.v2.group"  # containers naming one group share a pod daemon
WAIT = 30.0  # seconds: the bound of every poll here (against hangs, not a speed claim)
DEFAULT_CACHE = Path("/var/lib/containerd-shim-wasmtime/cache")


@pytest.fixture(scope="module")
def test_image(
    build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> TestImage:
    files = {f"/{name}.wasm": build_wasm(name) for name in ("hello", "sleep")}
    files["/loop_start.wasm"] = wat_binary("loop_start")
    config = ImageConfig(entrypoint=("/hello.wasm",))
    return make_image(tmp_path_factory.mktemp("process-model"), files, ref=IMAGE, config=config)


@pytest.fixture
def space(
    bed: PrivateContainerd, bed_ns: str, test_image: TestImage
) -> tuple[PrivateContainerd, str]:
    """A fresh namespace on `bed` with the image; at teardown nothing of it may be left."""
    test_image.import_into(bed, bed_ns)
    return bed, bed_ns


def _hello(cd: PrivateContainerd, ns: str) -> None:
    result = ctr_run(cd, ns, IMAGE, "/hello.wasm", "again")
    assert result.returncode == 0, describe(cd, result)
    assert result.stdout.startswith("hello from wasm\n"), describe(cd, result)


def _warm_pid(cd: PrivateContainerd, timeout: float = WAIT) -> int:
    """The warm runtime's pid, once one answers (the first `start` launches it)."""
    deadline = time.monotonic() + timeout
    while True:
        with_pid = cd.warm_runtime_pid()
        if with_pid is not None:
            try:
                reply = client.call(str(cd.address), "ping", timeout=2)
                if reply.get("pid") == str(with_pid):
                    return with_pid
            except client.Unreachable:
                pass
        assert time.monotonic() < deadline, "no warm runtime answers"
        time.sleep(0.05)


def _kill_and_collect(cd: PrivateContainerd, ns: str, cid: str) -> subprocess.CompletedProcess[str]:
    """SIGKILL a detached task, then delete it and its container; ctr's delete output."""
    cd.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=ns)
    wait_for_status(cd, ns, cid, "STOPPED")
    deleted = cd.ctr("task", "delete", cid, namespace=ns, check=False)
    cd.ctr("container", "delete", cid, namespace=ns)
    return deleted


# ------------------------------------------------------------------ the warm runtime


def test_a_killed_warm_runtime_takes_no_container_down(
    space: tuple[PrivateContainerd, str],
) -> None:
    cd, ns = space
    _hello(cd, ns)
    warm = _warm_pid(cd)
    cid = f"{ns}-sleeper"
    run = ctr_run(
        cd, ns, IMAGE, "/sleep.wasm", container_id=cid, rm=False, flags=("-d", "--null-io")
    )
    assert run.returncode == 0, describe(cd, run)
    wait_for_status(cd, ns, cid, "RUNNING")
    guest = task_pid(cd, ns, cid)

    os.kill(warm, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while alive(warm):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert alive(guest) and task_status(cd, ns, cid) == "RUNNING"
    _hello(cd, ns)  # served cold, and it launches a new runtime
    assert _warm_pid(cd) != warm
    _hello(cd, ns)  # through the new runtime
    deleted = _kill_and_collect(cd, ns, cid)  # the old container is still killable
    assert "137" in deleted.stderr, deleted.stderr
    assert not alive(guest)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_killed_spawner_is_replaced_and_the_running_container_goes_on(
    space: tuple[PrivateContainerd, str],
) -> None:
    """Issue 10, part 5: SIGKILL a pod's spawner while a container of the pod runs. The pod
    daemon starts a new spawner by exec of the shim's own program; the next containers of
    the pod run (forked by it, under the same daemon), and the one that was running goes
    on, is still killed by `ctr task kill` and its exit status reaches `ctr run`."""
    cd, ns = space
    pod = ("--annotation", f"{GROUP}={ns}-pod")
    first, later = f"{ns}-first", f"{ns}-later"
    running = ctr_popen(cd, ns, *run_args(IMAGE, first, ["/sleep.wasm"], flags=(*pod, "--null-io")))
    try:
        wait_for_status(cd, ns, first, "RUNNING")
        guest = task_pid(cd, ns, first)
        spawner = _parent(guest)
        daemon = _parent(spawner)
        os.kill(spawner, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while alive(spawner):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert alive(guest) and task_status(cd, ns, first) == "RUNNING"

        hello = ctr_run(cd, ns, IMAGE, "/hello.wasm", "5", flags=pod)
        assert hello.returncode == 5 and hello.stdout.startswith("hello from wasm"), describe(
            cd, hello
        )
        run = ctr_run(
            cd, ns, IMAGE, "/sleep.wasm", container_id=later, rm=False, flags=(*pod, "-d")
        )
        assert run.returncode == 0, describe(cd, run)
        wait_for_status(cd, ns, later, "RUNNING")
        replacement = _parent(task_pid(cd, ns, later))
        assert replacement != spawner and _parent(replacement) == daemon
        argv = Path(f"/proc/{replacement}/cmdline").read_bytes().split(b"\0")
        assert b"spawner" in argv and str(cd.address).encode() in argv
        assert alive(guest) and task_status(cd, ns, first) == "RUNNING"

        cd.ctr("task", "kill", "-s", "SIGTERM", first, namespace=ns)  # through the reaper
        out, err = running.communicate(timeout=WAIT)
        assert running.returncode == 128 + signal.SIGTERM, (out, err, cd.log_tail())
        assert not alive(guest)
        assert "137" in _kill_and_collect(cd, ns, later).stderr
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    log = cd.log_path.read_text(errors="replace")
    assert f"the spawner (pid {spawner}) went away" in log, cd.log_tail()
    assert f"a new spawner (pid {replacement}) serves this pod" in log, cd.log_tail()


def test_a_start_function_that_never_returns_is_killed_and_run_reports_137(
    space: tuple[PrivateContainerd, str],
) -> None:
    cd, ns = space
    cid = f"{ns}-loop"
    proc = ctr_popen(cd, ns, *run_args(IMAGE, cid, ["/loop_start.wasm"]))
    try:
        deadline = time.monotonic() + WAIT
        while task_status(cd, ns, cid) != "CREATED":  # STARTING shows as CREATED
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the task never appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # its start function spins; Start has not returned
        assert proc.poll() is None
        killed = cd.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=ns, check=False)
        assert killed.returncode == 0, killed.stderr
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 137, (out, err)


def test_containerd_restarted_every_task_still_answers_state_and_kill(
    frozen: Path, test_image: TestImage, build_wasm: Callable[[str], Path]
) -> None:
    """A containerd of its own (it is restarted), with the bundle's shim."""
    with PrivateContainerd(shim=frozen) as cd:
        ns = "restart"
        test_image.import_into(cd, ns)
        ids = [f"r{i}" for i in range(3)]
        for cid in ids:
            run = ctr_run(
                cd, ns, IMAGE, "/sleep.wasm", container_id=cid, rm=False, flags=("-d", "--null-io")
            )
            assert run.returncode == 0, describe(cd, run)
        for cid in ids:
            wait_for_status(cd, ns, cid, "RUNNING")
        pids = {cid: task_pid(cd, ns, cid) for cid in ids}
        cd.restart()
        for cid in ids:  # State, through the daemon containerd reconnected to
            assert task_status(cd, ns, cid) == "RUNNING"
            assert task_pid(cd, ns, cid) == pids[cid]
        for cid in ids:
            deleted = _kill_and_collect(cd, ns, cid)
            assert "137" in deleted.stderr, deleted.stderr
            assert not alive(pids[cid])
        _hello(cd, ns)
        _empty_namespace(cd, ns)
    assert not cd.stop_report, "\n".join(map(str, cd.stop_report))


def test_a_binary_replaced_on_disk_is_what_the_next_start_runs(
    frozen: Path, test_image: TestImage, tmp_path: Path
) -> None:
    """Upgrading the shim on a node: the runtime of the old build retires at the first
    `start` of the new one, which runs the container and launches a runtime of its own."""
    installed = tmp_path / "opt"
    shutil.copytree(frozen.parent, installed, symlinks=True)
    binary = installed / frozen.name
    with PrivateContainerd(shim=binary) as cd:
        ns = "upgrade"
        test_image.import_into(cd, ns)
        _hello(cd, ns)
        old = _warm_pid(cd)
        assert os.stat(f"/proc/{old}/exe").st_ino == os.stat(binary).st_ino
        replacement = binary.with_name(binary.name + ".new")
        shutil.copy2(binary, replacement)
        os.replace(replacement, binary)  # as a package manager installs: a new file
        new_inode = os.stat(binary).st_ino
        _hello(cd, ns)
        deadline = time.monotonic() + WAIT
        while alive(old):
            assert time.monotonic() < deadline, "the old build's runtime did not retire"
            time.sleep(0.05)
        new = _warm_pid(cd)
        assert new != old and os.stat(f"/proc/{new}/exe").st_ino == new_inode
        _hello(cd, ns)
        _empty_namespace(cd, ns)
    assert not cd.stop_report, "\n".join(map(str, cd.stop_report))


# ------------------------------------------------------------------ the compile cache


def test_a_cache_entry_damaged_in_the_middle_is_recompiled_and_the_container_runs(
    bed: PrivateContainerd, bed_ns: str, build_wasm: Callable[[str], Path], tmp_path: Path
) -> None:
    cd, ns = bed, bed_ns
    module = salted(build_wasm("hello").read_bytes())
    image = make_image(tmp_path, {"/hello.wasm": module}, ref=IMAGE, config=ImageConfig())
    image.import_into(cd, ns)
    _hello(cd, ns)  # the entry exists now
    key = load_source(module, EntrypointKind.MODULE, "").key
    [entry] = (DEFAULT_CACHE / key[:2]).glob(key + "-*.cwasm")
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    entry.write_bytes(data)
    _hello(cd, ns)
    [again] = (DEFAULT_CACHE / key[:2]).glob(key + "-*.cwasm")
    assert again.read_bytes() != bytes(data)
    log = cd.log_path.read_text(errors="replace")
    assert f"cache entry {entry} was damaged" in log, cd.log_tail()


# ------------------------------------------------------------------ nothing left behind


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_hundreds_of_lifecycles_leave_nothing_behind(space: tuple[PrivateContainerd, str]) -> None:
    """300 sequential and 100 parallel `ctr run --rm`: afterwards no shim process, mount,
    socket, bundle, cgroup or FIFO of the namespace (the `space` fixture checks), and the warm
    runtime holds as many descriptors and has as many children as before."""
    cd, ns = space
    _hello(cd, ns)
    warm = _warm_pid(cd)
    time.sleep(0.5)
    fds = _fd_count(warm)
    for _ in range(300):
        _hello(cd, ns)
    procs = [ctr_popen(cd, ns, *run_args(IMAGE, f"{ns}-p{i}", ["/hello.wasm"])) for i in range(100)]
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and out.startswith(b"hello from wasm\n"), err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert cd.warm_runtime_pid() == warm
    deadline = time.monotonic() + WAIT
    while _fd_count(warm) != fds or Path(f"/proc/{warm}/task/{warm}/children").read_text().split():
        assert time.monotonic() < deadline, (fds, os.listdir(f"/proc/{warm}/fd"))
        time.sleep(0.1)
