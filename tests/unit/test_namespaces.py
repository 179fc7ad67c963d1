"""shim/oci/namespaces.py: a spec's namespace paths are checked without ever blocking on them.

Each check runs in a thread with a guard, so code that opened a FIFO for reading (and waited
for a writer that never comes) fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from shim import libc
from shim.errors import InvalidArgument, NotFound, ShimError
from shim.oci.namespaces import NSFS_MAGIC, check, check_paths
from shim.oci.spec import Namespace
from tests.prereq import needs

GUARD = 10.0  # seconds; only reached when a check blocks


def bounded(fn: Callable[[], None]) -> BaseException | None:
    """Run ``fn`` in a thread; what it raised (None if nothing). Fails if it blocks."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), "the check blocked"
    return raised[0] if raised else None


@pytest.mark.parametrize(
    ("ns_type", "path"),
    [
        ("network", "/proc/self/ns/net"),
        ("ipc", "/proc/self/ns/ipc"),
        ("uts", "/proc/self/ns/uts"),
        ("pid", "/proc/self/ns/pid"),
        ("mount", "/proc/self/ns/mnt"),
        ("cgroup", "/proc/self/ns/cgroup"),
        ("network", f"/proc/{os.getpid()}/task/{os.getpid()}/ns/net"),
    ],
)
def test_namespace_files_pass(ns_type: str, path: str) -> None:
    assert bounded(lambda: check(ns_type, path)) is None


def test_a_fifo_is_refused_at_once_naming_the_namespace_and_the_path(tmp_path: Path) -> None:
    fifo = tmp_path / "net.fifo"
    os.mkfifo(fifo)
    error = bounded(lambda: check("network", str(fifo)))
    assert isinstance(error, InvalidArgument)
    assert "network namespace path" in error.message
    assert str(fifo) in error.message
    assert "is a FIFO, not a namespace file" in error.message


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda d: _write(d / "file", b"x"), "a regular file"),
        (lambda d: d, "a directory"),
        (lambda d: Path(os.devnull), "a character device"),
    ],
)
def test_other_files_are_refused_by_what_they_are(
    tmp_path: Path, make: Callable[[Path], Path], what: str
) -> None:
    path = make(tmp_path)
    error = bounded(lambda: check("ipc", str(path)))
    assert isinstance(error, InvalidArgument), error
    assert f"is {what}, not a namespace file" in error.message


def test_a_namespace_of_another_type_is_refused() -> None:
    error = bounded(lambda: check("network", "/proc/self/ns/ipc"))
    assert isinstance(error, InvalidArgument), error
    assert "is a namespace of type 'ipc', not 'network'" in error.message


@pytest.mark.parametrize(
    ("ns_type", "path", "error_type", "text"),
    [
        ("network", "/nonexistent/ns", NotFound, "/nonexistent/ns"),
        ("network", "proc/self/ns/net", InvalidArgument, "is not absolute"),
        ("netw0rk", "/proc/self/ns/net", InvalidArgument, "unknown namespace type 'netw0rk'"),
    ],
)
def test_missing_relative_and_unknown(
    ns_type: str, path: str, error_type: type[ShimError], text: str
) -> None:
    with pytest.raises(error_type, match=text):
        check(ns_type, path)


def test_check_paths_skips_entries_without_a_path(tmp_path: Path) -> None:
    fifo = tmp_path / "uts.fifo"
    os.mkfifo(fifo)
    check_paths([Namespace("pid"), Namespace("network", "/proc/self/ns/net")])
    with pytest.raises(InvalidArgument, match="uts namespace path"):
        check_paths([Namespace("pid"), Namespace("uts", str(fifo))])


@needs(os.geteuid() == 0, "needs root to bind-mount a namespace file")
def test_a_bind_mounted_namespace_file_passes(tmp_path: Path) -> None:
    """What CNI makes (/run/netns/NAME): a bind mount of /proc/PID/ns/net, still on nsfs."""
    target = _write(tmp_path / "netns", b"")
    libc.mount("/proc/self/ns/net", str(target), None, 4096, None)  # MS_BIND
    try:
        fd = os.open(target, os.O_PATH)
        try:
            assert libc.fstatfs_type(fd) == NSFS_MAGIC
        finally:
            os.close(fd)
        assert bounded(lambda: check("network", str(target))) is None
        error = bounded(lambda: check("uts", str(target)))
        assert isinstance(error, InvalidArgument), error
    finally:
        libc.umount2(str(target), 2)  # MNT_DETACH


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
