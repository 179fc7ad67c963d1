"""Issue 10, part 4, through the real containerd and ctr: the shim kills and removes only the
cgroups it created for a container. A cgroupsPath naming a cgroup that exists already (a
host cgroup with an unrelated process in it, or another container's) is refused at Create
with a message saying so, for wasm containers (the shim makes the cgroup) and native ones
(runc would join it); the unrelated process and the cgroup are untouched, and the container
that owns a cgroup keeps it, runs on, and has it removed at its own Delete.

Each test makes its cgroups under `/<its namespace>/` in every hierarchy the shim uses
(ctr's default cgroupsPath is `/<namespace>/<id>`), and removes them whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shim.cgroups import detect_layout
from tests.containerd import PrivateContainerd, alive
from tests.e2e.helpers import (
    TestImage,
    ctr_run,
    describe,
    make_image,
    remove_container,
    task_pid,
    wait_for_status,
)
from wasmtime_shim.images.build import ImageConfig

IMAGE = "docker.io/library/e2e-cgroup-ownership:latest"
GROUP = "io.containerd.runc.v2.group"  # one shim for every container that names the group
SANDBOX = "io.kubernetes.cri.container-type=sandbox"  # always native (shim/task/workload.py)


@pytest.fixture(scope="module")
def image(build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    files = {f"/{name}.wasm": build_wasm(name) for name in ("hello", "sleep")}
    config = ImageConfig(entrypoint=("/hello.wasm",))
    return make_image(tmp_path_factory.mktemp("cgroups"), files, ref=IMAGE, config=config)


def _leaves(path: str) -> list[Path]:
    """The directories of cgroup `path` in every hierarchy the shim uses."""
    return sorted({Path(mount + path) for mount in detect_layout().mounts.values()})


def _members(path: str) -> set[int]:
    return {int(p) for leaf in _leaves(path) for p in (leaf / "cgroup.procs").read_text().split()}


@contextlib.contextmanager
def _host_cgroup(path: str) -> Iterator[int]:
    """A cgroup made here (not by the shim) with an unrelated `sleep` in it; its pid."""
    made: list[Path] = []
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        for leaf in _leaves(path):
            leaf.mkdir(parents=True)
            made.append(leaf)
            (leaf / "cgroup.procs").write_text(str(sleeper.pid))
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
        for leaf in made:
            _rmdir(leaf)


def _rmdir(leaf: Path) -> None:
    deadline = time.monotonic() + 10
    while leaf.exists():
        try:
            leaf.rmdir()
        except OSError:
            assert time.monotonic() < deadline, f"cannot remove {leaf}"
            time.sleep(0.05)


@contextlib.contextmanager
def _removed_at_the_end(path: str) -> Iterator[None]:
    try:
        yield
    finally:
        for leaf in _leaves(path):
            if leaf.exists():
                for pid in (leaf / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                _rmdir(leaf)


def test_a_host_cgroup_in_cgroups_path_is_refused_and_left_alone(
    containerd: PrivateContainerd, ns: str, image: TestImage, tmp_path: Path
) -> None:
    """The observed failure was: every process of such a cgroup SIGKILLed, and the cgroup
    removed, at Delete. Now Create is refused, for wasm and for native (runc) containers."""
    from tests.pause.build import PAUSE_IMAGE, pause_image

    image.import_into(containerd, ns)
    containerd.import_image(pause_image().write(tmp_path / "pause.tar"), namespace=ns)
    path = f"/{ns}/host"
    with _host_cgroup(path) as unrelated:
        wasm = ctr_run(containerd, ns, IMAGE, "/hello.wasm", flags=("--cgroup", path))
        native = ctr_run(
            containerd,
            ns,
            PAUSE_IMAGE,
            flags=("--cgroup", path, "--annotation", SANDBOX),
            container_id=f"{ns}-native",
            rm=False,
        )
        remove_container(containerd, ns, f"{ns}-native")
        for refused in (wasm, native):
            assert refused.returncode != 0, describe(containerd, refused)
            assert f"cgroupsPath {path!r}: the cgroup " in refused.stderr, refused.stderr
            assert "exists already (processes in it: 1)" in refused.stderr, refused.stderr
        assert "hello from wasm" not in wasm.stdout
        assert alive(unrelated)
        assert all(leaf.is_dir() for leaf in _leaves(path))
        assert _members(path) == {unrelated}


def test_a_cgroups_path_in_use_by_another_container_is_refused(
    containerd: PrivateContainerd, ns: str, image: TestImage
) -> None:
    """Two containers on one cgroupsPath: the second is refused (from the same pod's shim or
    another one), the first runs on in it, and its Delete removes the cgroup it made."""
    image.import_into(containerd, ns)
    path = f"/{ns}/shared"
    pod = ("--annotation", f"{GROUP}={ns}-pod")
    owner = f"{ns}-owner"
    with _removed_at_the_end(path):
        try:
            run = ctr_run(
                containerd,
                ns,
                IMAGE,
                "/sleep.wasm",
                container_id=owner,
                rm=False,
                flags=(*pod, "-d", "--null-io", "--cgroup", path),
            )
            assert run.returncode == 0, describe(containerd, run)
            wait_for_status(containerd, ns, owner, "RUNNING")
            guest = task_pid(containerd, ns, owner)
            assert _members(path) == {guest}
            same_pod = ctr_run(containerd, ns, IMAGE, "/hello.wasm", flags=(*pod, "--cgroup", path))
            other_shim = ctr_run(containerd, ns, IMAGE, "/hello.wasm", flags=("--cgroup", path))
            for refused in (same_pod, other_shim):
                assert refused.returncode != 0, describe(containerd, refused)
                assert "exists already (processes in it: 1)" in refused.stderr, refused.stderr
            assert alive(guest) and _members(path) == {guest}
        finally:
            remove_container(containerd, ns, owner)
        assert not [leaf for leaf in _leaves(path) if leaf.exists()]
