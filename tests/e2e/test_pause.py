"""Pause and Resume through the real containerd and ``ctr``: the freezer really stops a guest.

A spinning guest (tests/wasm/c/spin.c, a loop with no system call) is paused with ``ctr task
pause``: ``ctr task ls`` says PAUSED, ``ctr events`` shows ``/tasks/paused``, and the CPU time
its cgroup is charged (v1 ``cpuacct.usage``, v2 ``cpu.stat`` usage_usec) stops growing.
``ctr task resume`` makes it grow again. A paused guest is then killed with SIGKILL (the shim
thaws it, or on cgroup v1 it would never act on the signal) and deleted, leaving nothing.

ctr 1.6 has no ``task update``; Update is driven through ``nerdctl update`` in
tests/e2e/test_nerdctl.py.
"""

from __future__ import annotations

import subprocess
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
    task_status,
    wait_for_status,
)
from tests.e2e.test_run_lifecycle import assert_no_leaks, delete_task

IMAGE = "docker.io/library/e2e-pause:latest"
CGROUP_ROOT = Path("/sys/fs/cgroup")
WAIT = 30.0
QUIET = 1.0  # seconds a paused guest is watched
FROZEN_SLACK_NS = 5_000_000  # CPU a frozen cgroup may still be charged in QUIET (ns)
RUNNING_FLOOR_NS = 100_000_000  # CPU a spinning guest gets at least in QUIET, even shared


@pytest.fixture(scope="module")
def test_image(
    build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> TestImage:
    files = {"/spin.wasm": build_wasm("spin")}
    return make_image(tmp_path_factory.mktemp("pause"), files, ref=IMAGE)


@pytest.fixture
def image(containerd: PrivateContainerd, ns: str, test_image: TestImage) -> str:
    return test_image.import_into(containerd, ns)


def cpu_usage_ns(ns: str, cid: str) -> int:
    """CPU time charged to the container's cgroup (ctr's cgroupsPath is ``/<ns>/<cid>``)."""
    v1 = CGROUP_ROOT / "cpuacct" / ns / cid / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text())
    for line in (CGROUP_ROOT / ns / cid / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) * 1000
    raise AssertionError(f"no usage_usec in the cpu.stat of {ns}/{cid}")


def usage_over(ns: str, cid: str, seconds: float) -> int:
    before = cpu_usage_ns(ns, cid)
    time.sleep(seconds)
    return cpu_usage_ns(ns, cid) - before


def frozen(ns: str, cid: str) -> bool:
    v1 = CGROUP_ROOT / "freezer" / ns / cid / "freezer.state"
    if v1.exists():
        return v1.read_text().strip() == "FROZEN"
    return "frozen 1" in (CGROUP_ROOT / ns / cid / "cgroup.events").read_text().splitlines()


@pytest.fixture
def events(containerd: PrivateContainerd) -> Iterator[subprocess.Popen[str]]:
    """``ctr events`` for the whole test; its output is read once it is terminated."""
    proc = subprocess.Popen(
        [str(containerd.ctr_bin), "--address", str(containerd.address), "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.3)  # subscribed before anything happens (it prints nothing until then)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def event_lines(proc: subprocess.Popen[str], ns: str) -> list[str]:
    """The ``/tasks/...`` topics ctr events printed for ``ns``, in order."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    topics = []
    for line in out.splitlines():  # TIMESTAMP (4 words: date time zone UTC) NS TOPIC EVENT
        fields = line.split()
        if ns in fields[:-1] and fields[fields.index(ns) + 1].startswith("/tasks/"):
            topics.append(fields[fields.index(ns) + 1])
    assert topics, f"ctr events printed nothing for {ns}:\n{out}"
    return topics


def ctr(containerd: PrivateContainerd, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return containerd.ctr(*args, namespace=ns, check=False, timeout=60)


def test_a_paused_guest_uses_no_cpu_resumes_and_can_be_killed_and_deleted(
    containerd: PrivateContainerd, ns: str, image: str, events: subprocess.Popen[str]
) -> None:
    cid = f"{ns}-spin"
    run = ctr_run(
        containerd, ns, image, "/spin.wasm", container_id=cid, rm=False, flags=("-d", "--null-io")
    )
    assert run.returncode == 0, describe(containerd, run)
    try:
        wait_for_status(containerd, ns, cid, "RUNNING")
        assert usage_over(ns, cid, QUIET) > RUNNING_FLOOR_NS  # it spins

        paused = ctr(containerd, ns, "task", "pause", cid)
        assert paused.returncode == 0, describe(containerd, paused)
        assert task_status(containerd, ns, cid) == "PAUSED"
        assert frozen(ns, cid)
        idle = usage_over(ns, cid, QUIET)
        assert idle < FROZEN_SLACK_NS, f"a paused guest was charged {idle} ns of CPU in {QUIET}s"
        again = ctr(containerd, ns, "task", "pause", cid)
        assert again.returncode != 0 and "cannot pause a paused process" in again.stderr

        resumed = ctr(containerd, ns, "task", "resume", cid)
        assert resumed.returncode == 0, describe(containerd, resumed)
        assert task_status(containerd, ns, cid) == "RUNNING"
        assert not frozen(ns, cid)
        assert usage_over(ns, cid, QUIET) > RUNNING_FLOOR_NS  # it goes on spinning

        # Paused again, then SIGKILL: it ends although it is frozen, and is deleted.
        assert ctr(containerd, ns, "task", "pause", cid).returncode == 0
        assert task_status(containerd, ns, cid) == "PAUSED"
        killed = ctr(containerd, ns, "task", "kill", "-s", "SIGKILL", cid)
        assert killed.returncode == 0, describe(containerd, killed)
        wait_for_status(containerd, ns, cid, "STOPPED", timeout=WAIT)
        assert delete_task(containerd, ns, cid) == 137
        containerd.ctr("container", "rm", cid, namespace=ns, timeout=30)
    finally:
        remove_container(containerd, ns, cid)
    assert event_lines(events, ns) == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/paused",
        "/tasks/exit",
        "/tasks/delete",
    ]
    assert_no_leaks(containerd, ns)


def test_pause_of_a_stopped_task_is_refused(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    cid = f"{ns}-gone"
    run = ctr_run(
        containerd, ns, image, "/spin.wasm", container_id=cid, rm=False, flags=("-d", "--null-io")
    )
    assert run.returncode == 0, describe(containerd, run)
    try:
        wait_for_status(containerd, ns, cid, "RUNNING")
        assert ctr(containerd, ns, "task", "kill", "-s", "SIGKILL", cid).returncode == 0
        wait_for_status(containerd, ns, cid, "STOPPED")
        for verb, words in (("pause", "cannot pause a stopped"), ("resume", "only a paused")):
            refused = ctr(containerd, ns, "task", verb, cid)
            assert refused.returncode != 0 and words in refused.stderr, refused.stderr
        assert delete_task(containerd, ns, cid) == 137
        containerd.ctr("container", "rm", cid, namespace=ns, timeout=30)
    finally:
        remove_container(containerd, ns, cid)
    assert_no_leaks(containerd, ns)
