"""A task's life through the real containerd and ``ctr``: run, kill, delete, crash, in bulk.

Everything here goes through ``ctr`` against the private containerd (tests/containerd.py), so
these tests check what a user sees, not what our own client thinks: the status column of
``ctr task ls``, the exit code ``ctr task delete`` reports, ctr's error text, and what is left
on the machine afterwards.

Facts about ctr 1.6 these tests lean on (read in Debian's containerd sources):

* ``ctr task delete`` prints ``task ID exit with non-zero exit code N`` (a logrus warning on
  stderr) and nothing for 0: the only way ctr 1.6 shows a detached task's exit status.
* ``ctr run -d --pid-file P`` creates the task, then writes P, then starts the task. When P
  cannot be written (its directory does not exist) ctr gives up between Create and Start and,
  being detached, leaves the task CREATED: the one way to get a created, never started task
  out of ctr.
* ``ctr run -t`` needs a console on its stdio before it talks to containerd at all (it panics
  without one), so the terminal test gives it a pseudo-terminal.
* Detached runs use ``--null-io``: a detached ctr never removes the FIFOs it made, and a FIFO
  left by ctr is not the shim's leak.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.containerd import PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    ctr_popen,
    ctr_run,
    describe,
    make_image,
    run_args,
    shim_pids,
    task_pid,
    task_status,
    wait_for_status,
)
from wasmtime_shim.images.build import ImageConfig

IMAGE = "docker.io/library/e2e-lifecycle:latest"
PROGRAMS = ("hello", "sleep")
PARALLEL = 20
WAIT = 30.0  # seconds: the bound of every poll in this module
CGROUP_ROOT = Path("/sys/fs/cgroup")
FIFO_DIR = Path("/run/containerd/fifo")
_EXIT_WARNING = re.compile(r"exit with non-zero exit code (\d+)")


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def test_image(
    build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> TestImage:
    """One image archive for the module: every program at ``/<name>.wasm``."""
    files = {f"/{name}.wasm": build_wasm(name) for name in PROGRAMS}
    config = ImageConfig(entrypoint=("/hello.wasm",))
    return make_image(tmp_path_factory.mktemp("lifecycle"), files, ref=IMAGE, config=config)


@pytest.fixture
def image(containerd: PrivateContainerd, ns: str, test_image: TestImage) -> str:
    """The module's image imported into this test's namespace."""
    return test_image.import_into(containerd, ns)


def ctr(containerd: PrivateContainerd, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return containerd.ctr(*args, namespace=ns, check=False, timeout=120)


def run_detached(containerd: PrivateContainerd, ns: str, image: str, cid: str, *argv: str) -> None:
    """``ctr run -d --null-io``: see the module docstring for why null IO."""
    result = ctr_run(
        containerd, ns, image, *argv, container_id=cid, rm=False, flags=("-d", "--null-io")
    )
    assert result.returncode == 0, describe(containerd, result)


def task_ids(containerd: PrivateContainerd, ns: str) -> list[str]:
    return containerd.ctr("task", "ls", "-q", namespace=ns, timeout=30).stdout.split()


def delete_task(containerd: PrivateContainerd, ns: str, cid: str) -> int:
    """``ctr task delete`` a stopped task and return the exit status ctr reports."""
    result = ctr(containerd, ns, "task", "delete", cid)
    assert result.returncode == 0, f"ctr task delete failed: {result.stderr}"
    match = _EXIT_WARNING.search(result.stderr)
    return int(match.group(1)) if match else 0


def remove_stopped(containerd: PrivateContainerd, ns: str, cid: str) -> None:
    """``ctr container rm``, which must succeed: the task is already deleted."""
    containerd.ctr("container", "rm", cid, namespace=ns, timeout=30)


def assert_no_leaks(containerd: PrivateContainerd, ns: str) -> None:
    """Nothing of ``ns`` is left: shims, mounts, sockets, bundles, cgroups, FIFOs.

    What is found is cleaned before the assert, so the ``ns`` fixture does not report it twice.
    """
    leaks = [str(leak) for leak in containerd.wait_for_no_leaks(ns)]
    if leaks:
        containerd.clean(ns)
    leaks += [f"cgroup: {path}" for path in container_cgroups(ns)]
    leaks += [f"fifo: {path}" for path in fifo_files(ns)]
    leaks += [f"fifo fd: {fd}" for fd in containerd_fifo_fds(containerd, ns)]
    assert not leaks, "left behind:\n" + "\n".join(leaks)


def container_cgroups(ns: str) -> list[Path]:
    """Per-container cgroup dirs (ctr's cgroupsPath is ``/<ns>/<id>``), v1 and v2 alike.

    The ``<ns>`` level itself may stay: runc leaves it too, and it holds no process.
    """
    found = [path for path in CGROUP_ROOT.glob(f"*/{ns}/*") if path.is_dir()]
    return found + [path for path in CGROUP_ROOT.glob(f"{ns}/*") if path.is_dir()]


def fifo_files(ns: str) -> list[Path]:
    """FIFOs ctr made for this test's containers (their ids all start with the test's ns)."""
    return sorted(FIFO_DIR.glob(f"*/{ns}*"))


def containerd_fifo_fds(containerd: PrivateContainerd, ns: str) -> list[str]:
    """Open fds of our containerd on a FIFO of this test's containers."""
    found: list[str] = []
    for pid in pids_with_arg(str(containerd.config_path)):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(FIFO_DIR)) and Path(target).name.startswith(ns):
                found.append(f"{fd} -> {target}")
    return found


def pids_with_arg(*wanted: str) -> list[int]:
    """Processes whose argv holds every one of ``wanted`` as a whole argument."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if all(arg in argv for arg in wanted):
            found.append(int(proc.name))
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_gone(pid: int) -> None:
    """Poll until ``pid`` no longer exists (or is a zombie) -- bounded."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still exists after {WAIT}s")


def exit_event(containerd: PrivateContainerd, ns: str, cid: str) -> dict[str, object]:
    """The /tasks/exit event containerd published for ``cid``, from the event recorder."""
    pattern = re.compile(rf" {re.escape(ns)} /tasks/exit (\{{.*\}})\s*$")
    deadline = time.monotonic() + WAIT
    while True:
        for line in containerd.events_path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match:
                event = json.loads(match.group(1))
                if event.get("container_id") == cid:
                    return event
        if time.monotonic() >= deadline:
            raise AssertionError(f"no /tasks/exit event for {cid} within {WAIT}s")
        time.sleep(0.1)


# ------------------------------------------------------------------ kill and exit status


@pytest.mark.parametrize(("signal_args", "status"), [((), 143), (("-s", "SIGKILL"), 137)])
def test_kill_running_guest_reports_128_plus_signal(
    containerd: PrivateContainerd, ns: str, image: str, signal_args: tuple[str, ...], status: int
) -> None:
    cid = f"{ns}-sleep"
    run_detached(containerd, ns, image, cid, "/sleep.wasm")
    wait_for_status(containerd, ns, cid, "RUNNING")
    assert task_pid(containerd, ns, cid) > 0
    # The leak check below looks for exactly these: it must see them while the task lives.
    assert {path.name for path in container_cgroups(ns)} == {cid}
    refused = ctr(containerd, ns, "task", "delete", cid)
    assert refused.returncode != 0 and "running" in refused.stderr, refused.stderr
    assert task_status(containerd, ns, cid) == "RUNNING"

    killed = ctr(containerd, ns, "task", "kill", *signal_args, cid)
    assert killed.returncode == 0, killed.stderr
    wait_for_status(containerd, ns, cid, "STOPPED")
    assert delete_task(containerd, ns, cid) == status
    assert cid not in task_ids(containerd, ns)
    remove_stopped(containerd, ns, cid)
    assert_no_leaks(containerd, ns)


def test_kill_after_exit_says_process_already_finished(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    cid = f"{ns}-done"
    run_detached(containerd, ns, image, cid, "/hello.wasm", "5")
    wait_for_status(containerd, ns, cid, "STOPPED")
    for signal_args in ((), ("-s", "SIGKILL")):
        killed = ctr(containerd, ns, "task", "kill", *signal_args, cid)
        assert killed.returncode != 0
        assert "process already finished" in killed.stderr, killed.stderr
    # The refused kills changed nothing: the guest's own exit status is still the one reported.
    assert delete_task(containerd, ns, cid) == 5
    remove_stopped(containerd, ns, cid)
    assert_no_leaks(containerd, ns)


def test_kill_created_task_stops_it(containerd: PrivateContainerd, ns: str, image: str) -> None:
    cid = f"{ns}-created"
    pid_file = containerd.base / "no-such-dir" / f"{cid}.pid"
    flags = ("-d", "--null-io", "--pid-file", str(pid_file))
    result = ctr_run(containerd, ns, image, "/sleep.wasm", container_id=cid, rm=False, flags=flags)
    assert result.returncode != 0 and "no such file or directory" in result.stderr, result.stderr
    wait_for_status(containerd, ns, cid, "CREATED")

    killed = ctr(containerd, ns, "task", "kill", cid)
    assert killed.returncode == 0, killed.stderr
    wait_for_status(containerd, ns, cid, "STOPPED")
    assert delete_task(containerd, ns, cid) != 0
    remove_stopped(containerd, ns, cid)
    assert_no_leaks(containerd, ns)


# ------------------------------------------------------------------ many at once


def test_twenty_parallel_runs_each_print_their_own_argv(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for n in range(1, PARALLEL + 1):
            argv = ("/hello.wasm", str(n), f"tag {n}!")
            procs[n] = ctr_popen(containerd, ns, *run_args(image, f"{ns}-p{n}", argv))
        deadline = time.monotonic() + 300  # one bound for all of them, not 300 s each
        results = {
            n: proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            for n, proc in procs.items()
        }
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for n, (out, err) in results.items():
        expected = f"hello from wasm\nargv[0]=/hello.wasm\nargv[1]={n}\nargv[2]=tag {n}!\n"
        assert (procs[n].returncode, out.decode()) == (n, expected), err.decode()
    assert task_ids(containerd, ns) == []
    assert containerd.ctr("container", "ls", "-q", namespace=ns).stdout.split() == []
    assert_no_leaks(containerd, ns)


# ------------------------------------------------------------------ a shim that dies


def test_shim_sigkill_is_cleaned_up_by_containerd(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    cid = f"{ns}-orphan"
    run_detached(containerd, ns, image, cid, "/sleep.wasm")
    wait_for_status(containerd, ns, cid, "RUNNING")
    guest = task_pid(containerd, ns, cid)

    # The daemon is the topmost ancestor of the guest that still carries `-id <cid>`.
    shim = guest
    while cid in Path(f"/proc/{parent_of(shim)}/cmdline").read_bytes().decode().split("\0"):
        shim = parent_of(shim)
    assert shim != guest, "the guest is not a child of a shim process"
    assert shim in shim_pids(containerd, cid)

    os.kill(shim, signal.SIGKILL)
    wait_gone(shim)
    wait_gone(guest)
    deadline = time.monotonic() + WAIT
    while task_status(containerd, ns, cid) not in (None, "STOPPED"):
        assert time.monotonic() < deadline, f"task {cid} not stopped after its shim was killed"
        time.sleep(0.05)
    assert exit_event(containerd, ns, cid)["exit_status"] == 137

    deleted = ctr(containerd, ns, "task", "delete", cid)
    assert deleted.returncode == 0 or "not found" in deleted.stderr, deleted.stderr
    assert cid not in task_ids(containerd, ns)
    remove_stopped(containerd, ns, cid)
    assert_no_leaks(containerd, ns)


# ------------------------------------------------------------------ refused features


def test_checkpoint_says_not_supported_and_why(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    """Checkpoint stays refused (exec, once refused here too, works: tests/e2e/test_exec.py
    and, with a terminal, tests/e2e/test_tty.py)."""
    cid = f"{ns}-busy"
    run_detached(containerd, ns, image, cid, "/sleep.wasm")
    wait_for_status(containerd, ns, cid, "RUNNING")

    refused = ctr(containerd, ns, "task", "checkpoint", cid)
    assert refused.returncode != 0
    # containerd 1.x's ctr names the gRPC code "not implemented", 2.x's "UNIMPLEMENTED".
    code = "not implemented" in refused.stderr or "UNIMPLEMENTED" in refused.stderr
    assert "not supported" in refused.stderr and code, refused.stderr
    assert "CRIU cannot save and restore it" in refused.stderr, refused.stderr  # and why
    # The refusal did not disturb the task.
    assert task_status(containerd, ns, cid) == "RUNNING"
    assert ctr(containerd, ns, "task", "kill", "-s", "SIGKILL", cid).returncode == 0
    wait_for_status(containerd, ns, cid, "STOPPED")
    assert delete_task(containerd, ns, cid) == 137
    remove_stopped(containerd, ns, cid)
    assert_no_leaks(containerd, ns)


def test_run_t_prints_through_the_terminal(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    """``ctr run -t``: the guest's output comes through its terminal, all of it before ctr
    exits with the guest's status; nothing is left behind.
    Typing into a terminal: tests/e2e/test_tty.py."""
    cid = f"{ns}-tty"
    cmd = [str(containerd.ctr_bin), "--address", str(containerd.address), "--namespace", ns]
    output, code = run_on_pty(cmd + run_args(image, cid, ["/hello.wasm", "5"], flags=["-t"]))

    assert code == 5, output
    # CRs: the guest's pty adds one per line, and run_on_pty's own pty may add another
    lines = output.replace("\r", "")
    assert "hello from wasm\nargv[0]=/hello.wasm\nargv[1]=5\n" in lines, output
    assert containerd.ctr("container", "ls", "-q", namespace=ns).stdout.split() == []
    assert_no_leaks(containerd, ns)


def run_on_pty(cmd: list[str]) -> tuple[str, int]:
    """Run ``cmd`` with a pseudo-terminal as its stdio; return (all output, exit code)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every holder of the slave side has closed it
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return b"".join(chunks).decode(errors="replace"), code
