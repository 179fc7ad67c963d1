"""Guests that fail, through the real containerd and ``ctr``: each fails cleanly, and after it
the next container runs and nothing is left behind.

With one shim per container, "the shim survives" means: the failure is reported as the
guest's (an exit code, or a refusal naming the file), containerd cleans the container up as
usual, and the next ``ctr run`` in the same namespace works.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.containerd import PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    ctr_run,
    describe,
    make_image,
    task_pid,
    wait_for_status,
    wat_binary,
)
from tests.e2e.test_run_lifecycle import (
    assert_no_leaks,
    ctr,
    delete_task,
    remove_stopped,
    run_detached,
    task_ids,
    wait_gone,
)
from wasmtime_shim.images.build import FileSource, ImageConfig

IMAGE = "docker.io/library/e2e-failures:latest"
PROGRAMS = ("hello", "spin", "trap", "membomb")
MIB = 1024 * 1024
MEMORY_LIMIT = 128 * MIB
_ALLOCATED = re.compile(r"allocated (\d+) MiB")


@pytest.fixture(scope="module")
def test_image(
    build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> TestImage:
    """The programs at ``/<name>.wasm`` plus the things an entrypoint must not be."""
    files: dict[str, FileSource] = {f"/{name}.wasm": build_wasm(name) for name in PROGRAMS}
    files["/true"] = Path("/bin/true")  # a host ELF executable
    files["/script.sh"] = b"#!/bin/sh\necho from a script\n"
    files["/truncated.wasm"] = build_wasm("hello").read_bytes()[:100]
    files["/empty.wasm"] = b""
    files["/bigmem.wasm"] = wat_binary("bigmem")  # 64 MiB of initial linear memory
    config = ImageConfig(entrypoint=("/hello.wasm",))
    return make_image(tmp_path_factory.mktemp("failures"), files, ref=IMAGE, config=config)


@pytest.fixture
def image(containerd: PrivateContainerd, ns: str, test_image: TestImage) -> str:
    return test_image.import_into(containerd, ns)


def assert_next_container_runs(containerd: PrivateContainerd, ns: str, image: str) -> None:
    """A fresh container in the same namespace runs normally, and then nothing is left."""
    result = ctr_run(containerd, ns, image, "/hello.wasm", "7", container_id=f"{ns}-next")
    assert result.returncode == 7, describe(containerd, result)
    assert "argv[1]=7" in result.stdout, describe(containerd, result)
    assert task_ids(containerd, ns) == []
    assert containerd.ctr("container", "ls", "-q", namespace=ns).stdout.split() == []
    assert_no_leaks(containerd, ns)


# ------------------------------------------------------------------ guests that fail at run time


def test_trap_exits_134_with_the_trap_message(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    result = ctr_run(containerd, ns, image, "/trap.wasm", container_id=f"{ns}-trap")

    assert result.returncode == 134, describe(containerd, result)
    assert result.stdout == "about to trap\n", describe(containerd, result)
    assert "wasm trap" in result.stderr, describe(containerd, result)
    assert "unreachable" in result.stderr, describe(containerd, result)
    assert_next_container_runs(containerd, ns, image)


def test_spinning_guest_is_killed(containerd: PrivateContainerd, ns: str, image: str) -> None:
    cid = f"{ns}-spin"
    run_detached(containerd, ns, image, cid, "/spin.wasm")
    wait_for_status(containerd, ns, cid, "RUNNING")
    guest = task_pid(containerd, ns, cid)

    # A busy loop makes no syscall: only the signal itself can end it.
    killed = ctr(containerd, ns, "task", "kill", cid)
    assert killed.returncode == 0, killed.stderr
    wait_for_status(containerd, ns, cid, "STOPPED")
    wait_gone(guest)
    assert delete_task(containerd, ns, cid) == 143
    remove_stopped(containerd, ns, cid)
    assert_next_container_runs(containerd, ns, image)


def test_memory_bomb_fails_cleanly_instead_of_oom_kill(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    result = ctr_run(
        containerd,
        ns,
        image,
        "/membomb.wasm",
        flags=("--memory-limit", str(MEMORY_LIMIT)),
        container_id=f"{ns}-bomb",
        timeout=120,
    )
    report = describe(containerd, result)

    assert result.returncode != 137, "OOM-killed instead of failing inside wasm\n" + report
    assert result.returncode != 0, report
    counts = [int(n) for n in _ALLOCATED.findall(result.stdout)]
    assert counts, report  # it did run and allocate before failing
    assert max(counts) * MIB < MEMORY_LIMIT, report
    # Either the guest saw malloc fail (and said so), or the engine trapped (and said so).
    clear = "malloc failed" in result.stdout or "wasm trap" in result.stderr
    assert clear, report
    assert_next_container_runs(containerd, ns, image)


def test_a_memory_limit_below_the_modules_initial_memory_is_named(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    """Issue 10: the module cannot even instantiate under the limit: Start fails with a
    message naming the limit and what the module needs, not "died during setup"."""
    result = ctr_run(containerd, ns, image, "/bigmem.wasm", flags=("--memory-limit", str(64 * MIB)))
    report = describe(containerd, result)
    assert result.returncode != 0, report
    assert "the memory limit of 64.0 MiB is too small for /bigmem.wasm" in result.stderr, report
    assert "its linear memory starts at 64.0 MiB" in result.stderr, report
    assert_next_container_runs(containerd, ns, image)


def test_a_memory_limit_too_small_to_load_anything_is_named(
    containerd: PrivateContainerd, ns: str, image: str
) -> None:
    """64 KiB: the process is OOM-killed while it loads the program; the error says so and
    names the limit."""
    result = ctr_run(containerd, ns, image, "/hello.wasm", flags=("--memory-limit", "65536"))
    report = describe(containerd, result)
    assert result.returncode != 0, report
    assert "killed by the kernel's OOM killer during setup" in result.stderr, report
    assert "memory limit of 64.0 KiB" in result.stderr, report
    assert_next_container_runs(containerd, ns, image)


# ------------------------------------------------------------------ entrypoints that are refused


@pytest.mark.parametrize(
    ("entrypoint", "reason"),
    [
        ("/true", "ELF"),
        ("/script.sh", "script"),
        ("/missing.wasm", "not found"),
        ("/truncated.wasm", "not a valid wasm module"),
        ("/empty.wasm", "empty"),
    ],
)
def test_bad_entrypoint_is_refused_with_a_clear_message(
    containerd: PrivateContainerd, ns: str, image: str, entrypoint: str, reason: str
) -> None:
    result = ctr_run(containerd, ns, image, entrypoint, container_id=f"{ns}-bad")
    report = describe(containerd, result)

    assert result.returncode == 1, report  # ctr's own failure, not a guest exit code
    assert result.stdout == "", report
    message = result.stderr
    assert message.startswith("ctr: "), report
    assert entrypoint in message and reason in message, report
    assert_next_container_runs(containerd, ns, image)
