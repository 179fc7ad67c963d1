"""shim/oci/mounts.py against the real kernel: stacking a rootfs, undoing it, unmounting twice.

Each test runs in a forked child that first makes its own private mount namespace, so nothing
it mounts can leak into the machine, even when an assertion fails half-way.
(Option parsing is tested without root in test_spec.py.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shim import libc
from shim.errors import InvalidArgument
from shim.oci import mounts
from tests.conftest import in_child, require

CLONE_NEWNS = 0x20000


def in_private_mount_namespace(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child with its own mount namespace; 0 when it returned."""

    def unshared() -> None:
        libc.unshare(CLONE_NEWNS)
        libc.mount("none", "/", None, mounts.MS_PRIVATE | mounts.MS_REC, None)
        body()

    return in_child(unshared)


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    require(os.geteuid() == 0, "needs root to mount")
    lower, upper, target = tmp_path / "lower", tmp_path / "upper", tmp_path / "rootfs"
    for d in (lower, upper, target):
        d.mkdir()
    (lower / "a").write_text("lower")
    (upper / "b").write_text("upper")
    return lower, upper, target


def test_stacked_binds_read_only_and_unmount_all(layers: tuple[Path, Path, Path]) -> None:
    lower, upper, target = layers

    def body() -> None:
        mounts.mount_rootfs(
            [
                mounts.MountRequest("bind", str(lower), ("rbind", "ro")),
                mounts.MountRequest("bind", str(upper), ("rbind", "rw")),
            ],
            str(target),
        )
        assert mounts.is_mountpoint(str(target))
        assert sorted(os.listdir(target)) == ["b"]  # the last mount is on top
        (target / "c").write_text("rw")  # the top one is writable ...
        assert mounts.unmount_all(str(target)) == 2
        assert sorted(os.listdir(target)) == []
        assert mounts.unmount_all(str(target)) == 0  # ... and unmounting twice is harmless

    assert in_private_mount_namespace(body) == 0


def test_read_only_bind_is_remounted_read_only(layers: tuple[Path, Path, Path]) -> None:
    lower, _, target = layers

    def body() -> None:
        mounts.mount(mounts.MountRequest("bind", str(lower), ("bind", "ro")), str(target))
        try:
            (target / "x").write_text("no")
        except OSError as e:
            assert e.strerror == "Read-only file system"
        else:
            raise AssertionError("a ro bind accepted a write")
        mounts.unmount_all(str(target))

    assert in_private_mount_namespace(body) == 0


def test_a_failed_mount_undoes_the_ones_before_it(
    layers: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    lower, _, target = layers

    def body() -> None:
        requests = [
            mounts.MountRequest("bind", str(lower), ("rbind",)),
            mounts.MountRequest("bind", str(tmp_path / "missing"), ("rbind",)),
        ]
        try:
            mounts.mount_rootfs(requests, str(target))
        except InvalidArgument as e:
            assert "missing" in str(e) and "No such file or directory" in str(e), e
        else:
            raise AssertionError("mounting a missing source succeeded")
        assert not mounts.is_mountpoint(str(target))

    assert in_private_mount_namespace(body) == 0
