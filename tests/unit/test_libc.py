"""shim/libc.py: each wrapper reaches the real system call and turns a failure into OSError.

The failure cases run as any user. The success cases change the machine (a tmpfs mount, a new
UTS namespace, the subreaper bit), so they need root and run in a forked child, where what they
change dies with it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
from pathlib import Path

import pytest

from shim import libc
from tests.conftest import in_child, require

PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_GET_CHILD_SUBREAPER = 37
CLONE_NEWNS = 0x20000
CLONE_NEWUTS = 0x4000000


def test_failures_raise_oserror_with_the_errno(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        libc.prctl(-1)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        libc.setns(-1)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        libc.unshare(-1)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        libc.umount2(str(tmp_path / "missing"), 0)
    assert info.value.errno in (errno.ENOENT, errno.EPERM)
    with pytest.raises(OSError) as info:
        libc.mount("none", str(tmp_path / "missing"), "tmpfs", 0, None)
    assert info.value.errno in (errno.ENOENT, errno.EPERM)


def test_prctl_returns_the_result_and_takes_signals() -> None:
    def body() -> None:
        libc.prctl(PR_SET_DUMPABLE, 0)
        assert libc.prctl(PR_GET_DUMPABLE) == 0  # a GET option's value is the call's result
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        flag = ctypes.c_int(0)
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))  # this one writes to arg2
        assert flag.value == 1
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # an IntEnum passes as an int
        libc.prctl(PR_GET_PDEATHSIG, ctypes.addressof(flag))
        assert flag.value == signal.SIGKILL

    assert in_child(body) == 0


def test_mount_and_umount2_as_root(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root to mount")

    def body() -> None:
        libc.unshare(CLONE_NEWNS)  # the mount stays in this child's own namespace
        libc.mount("none", "/", None, 0x40000 | 0x4000, None)  # MS_PRIVATE | MS_REC
        libc.mount("shim-libc-test", str(tmp_path), "tmpfs", 0, "size=1m")
        (tmp_path / "f").write_text("x")
        libc.umount2(str(tmp_path), 2)  # MNT_DETACH
        assert not (tmp_path / "f").exists()

    assert in_child(body) == 0
    assert list(tmp_path.iterdir()) == []


def test_unshare_and_setns_as_root() -> None:
    require(os.geteuid() == 0, "needs root to create namespaces")
    host = socket.gethostname()

    def body() -> None:
        original = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        libc.unshare(CLONE_NEWUTS)
        socket.sethostname("shim-libc-test")
        libc.setns(original, CLONE_NEWUTS)
        assert socket.gethostname() == host

    assert in_child(body) == 0
    assert socket.gethostname() == host
