"""Starting a warm runtime in the background, from `start`.

`start` never waits for the runtime it launches: it serves its own container cold
(shim/manager.py) while the runtime boots. The runtime is this very binary, run as
`<binary> -address <containerd socket> warm`, detached from containerd (its own session,
stdio on /dev/null, reparented away from `start`).

One runtime per containerd: a live runtime holds an exclusive lock on `<key>.lock` for its
whole life. `start` launches one only when it can take that lock itself, and hands its
descriptor to the runtime it executes (the lock belongs to the open file, so it never comes
free in between): a burst of cold starts launches exactly one runtime. A runtime that fails
to boot leaves `<key>.failed`; for `RETRY_SECONDS` after that nobody launches another, so a
broken install costs a cold start per container, not a failed boot as well.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

from shim.warm import protocol

RETRY_SECONDS = 5.0
TITLE_ROOM = 512  # bytes of argv reserved for the daemons' titles (shim/proctitle.py)


def containerd_environment() -> dict[str, str]:
    """The environment containerd gave this process. The PyInstaller bundle's bootloader adds
    its own variables (`_PYI_*`, and its `_internal/` at the head of LD_LIBRARY_PATH, the old
    value kept in LD_LIBRARY_PATH_ORIG); a daemon, runc or a logger must not inherit those:
    the bundle's libraries would shadow the node's."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        for key in [k for k in env if k.startswith("_PYI") or k == "_MEIPASS2"]:
            del env[key]
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original is None:
            env.pop("LD_LIBRARY_PATH", None)
        else:
            env["LD_LIBRARY_PATH"] = original
    return env


def self_argv() -> list[str]:
    """How to run this same program again: the frozen binary, the console script that
    containerd ran, or (run by hand from a checkout) `python -m shim`."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    arg0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if arg0 and os.path.isfile(arg0) and os.access(arg0, os.X_OK):
        return [arg0]
    return [sys.executable, "-m", "shim"]


def _recently_failed(containerd_address: str) -> bool:
    try:
        since = time.time() - os.stat(protocol.control_path(containerd_address, ".failed")).st_mtime
    except OSError:
        return False
    return since < RETRY_SECONDS


def take_lock(containerd_address: str) -> int | None:
    """The runtime lock's descriptor, locked; None when a live runtime holds it."""
    os.makedirs(protocol.CONTROL_DIR, mode=0o700, exist_ok=True)
    path = protocol.control_path(containerd_address, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def launch(containerd_address: str) -> bool:
    """Launch a warm runtime for this containerd unless one lives (or one failed to boot
    moments ago). Returns whether it launched one. Never raises: `start` goes on cold."""
    try:
        if _recently_failed(containerd_address):
            return False
        lock = take_lock(containerd_address)
    except OSError:
        return False
    if lock is None:
        return False
    # The padding argument leaves room in the runtime's argv for its daemons' titles.
    argv = [
        *self_argv(),
        "-address",
        containerd_address,
        "-lock-fd",
        "3",
        "-title-room",
        "." * TITLE_ROOM,
        "warm",
    ]
    try:
        pid = os.fork()
    except OSError:
        os.close(lock)
        return False
    if pid == 0:  # the intermediate: a new session, then the runtime, then gone
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.dup2(lock, 3)  # the lock goes on in the runtime (dup2 onto itself keeps
                os.set_inheritable(3, True)  # close-on-exec: clear it in any case)
                os.closerange(4, os.sysconf("SC_OPEN_MAX"))
                os.execve(argv[0], argv, containerd_environment())
        finally:
            os._exit(0)
    os.close(lock)
    os.waitpid(pid, 0)
    return True
