"""``ctr task exec`` into a running wasm container, through the real containerd and ``ctr``.

The init (tests/wasm/c/files.c ``keep``) writes a file into a read-write bind mount and keeps
running; exec processes then read it from inside the container (the init's mount namespace
and root), their output and exit code reaching ctr while the init stays RUNNING. An exec of
a program the image does not have fails with the reason. ``ctr events`` shows the exec's
events, ``ctr task ps`` lists the exec process, and killing the init ends a long-running
exec. Each test runs on the venv's shim and on the shipped bundle (the ``bed`` fixture).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    ctr_run,
    describe,
    make_image,
    remove_container,
    task_pid,
    task_status,
    tool_files,
    wait_for_status,
)
from tests.e2e.test_run_lifecycle import assert_no_leaks, delete_task
from wasmtime_shim.images.build import ImageConfig

WAIT = 30.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    return make_image(
        tmp_path_factory.mktemp("exec"),
        tool_files("/bin"),
        ref="example.com/e2e/exec:latest",
        config=ImageConfig(env=("PATH=/bin",)),
    )


@pytest.fixture
def ref(bed: PrivateContainerd, bed_ns: str, image: TestImage) -> str:
    return image.import_into(bed, bed_ns)


class EventLog:
    """``ctr events`` for the whole test, its lines collected by a thread."""

    def __init__(self, bed: PrivateContainerd) -> None:
        self.proc = subprocess.Popen(
            [str(bed.ctr_bin), "--address", str(bed.address), "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def topics(self, ns: str, last: str) -> list[str]:
        """(topic and event) of every /tasks/ event for ``ns``, once ``last`` has come
        (events are forwarded in order, but after the RPCs that caused them returned)."""
        deadline = time.monotonic() + WAIT
        while True:
            found = []
            for line in list(self.lines):
                fields = line.split()
                if ns in fields[:-1] and fields[fields.index(ns) + 1].startswith("/tasks/"):
                    found.append(" ".join(fields[fields.index(ns) + 1 :]))
            if any(t.startswith(last) for t in found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def events(bed: PrivateContainerd) -> Iterator[EventLog]:
    log = EventLog(bed)
    try:
        time.sleep(0.3)  # subscribed before anything happens
        yield log
    finally:
        log.stop()


def ctr(bed: PrivateContainerd, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return bed.ctr(*args, namespace=ns, check=False, timeout=120)


def start_init(bed: PrivateContainerd, ns: str, ref: str, cid: str, data: Path) -> None:
    """The init: writes /data/x into the rw bind mount of ``data``, then sleeps."""
    flags = ("-d", "--null-io", "--mount", f"type=bind,src={data},dst=/data,options=rbind:rw")
    argv = ("/bin/files.wasm", "keep", "/data/x", "written by the init")
    run = ctr_run(bed, ns, ref, *argv, container_id=cid, rm=False, flags=flags)
    assert run.returncode == 0, describe(bed, run)
    wait_for_status(bed, ns, cid, "RUNNING")
    deadline = time.monotonic() + WAIT
    while not (data / "x").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (data / "x").read_text() == "written by the init"


def test_exec_reads_what_the_init_wrote_and_reports_its_exit_code(
    bed: PrivateContainerd, bed_ns: str, ref: str, tmp_path: Path, events: EventLog
) -> None:
    ns, cid = bed_ns, f"{bed_ns}-init"
    start_init(bed, ns, ref, cid, tmp_path)
    try:
        done = ctr(
            bed, ns, "task", "exec", "--exec-id", "e1", cid, "/bin/files.wasm", "read", "/data/x"
        )
        assert (done.returncode, done.stdout) == (0, "written by the init"), describe(bed, done)
        assert task_status(bed, ns, cid) == "RUNNING"

        # A bare name through the exec's PATH, and a failing program's exit code.
        failed = ctr(
            bed, ns, "task", "exec", "--exec-id", "e2", cid, "files.wasm", "read", "/data/none"
        )
        assert failed.returncode == 1, describe(bed, failed)
        assert "files: read /data/none" in failed.stderr, describe(bed, failed)
        assert task_status(bed, ns, cid) == "RUNNING"

        missing = ctr(bed, ns, "task", "exec", "--exec-id", "e3", cid, "/bin/nope.wasm")
        assert missing.returncode != 0, describe(bed, missing)
        assert "/bin/nope.wasm" in missing.stderr and "not found" in missing.stderr, missing.stderr
        assert task_status(bed, ns, cid) == "RUNNING"

        # With a terminal (ctr task exec -t): tests/e2e/test_tty.py.
    finally:
        remove_container(bed, ns, cid)
    seen = events.topics(ns, last="/tasks/delete")
    e1 = [t.split()[0] for t in seen if '"exec_id":"e1"' in t or '"id":"e1"' in t]
    assert e1 == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"], seen
    (e2_exit,) = [t for t in seen if t.startswith("/tasks/exit") and '"id":"e2"' in t]
    assert '"exit_status":1' in e2_exit, e2_exit
    assert not [t for t in seen if '"e3"' in t], seen  # refused at Exec: never added
    assert_no_leaks(bed, ns)


def test_killing_the_init_ends_a_running_exec(
    bed: PrivateContainerd, bed_ns: str, ref: str, tmp_path: Path
) -> None:
    ns, cid = bed_ns, f"{bed_ns}-init"
    start_init(bed, ns, ref, cid, tmp_path)
    cmd = [str(bed.ctr_bin), "--address", str(bed.address), "--namespace", ns, "task", "exec"]
    cmd += ["--exec-id", "long", cid, "/bin/sleep.wasm", "3600"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "sleeping 3600\n"  # it runs
        init = task_pid(bed, ns, cid)
        ps = ctr(bed, ns, "task", "ps", cid).stdout.split()
        pids = {int(w) for w in ps if w.isdigit()}
        assert init in pids and len(pids) == 2, ps

        killed = ctr(bed, ns, "task", "kill", "-s", "SIGKILL", cid)
        assert killed.returncode == 0, describe(bed, killed)
        assert proc.wait(timeout=WAIT) == 137
        wait_for_status(bed, ns, cid, "STOPPED")
        assert delete_task(bed, ns, cid) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_container(bed, ns, cid)
    assert_no_leaks(bed, ns)
