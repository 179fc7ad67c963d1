"""Starting a warm runtime in the background, from `start`.

`start` never waits for the runtime it launches: it serves its own container cold
(shim/manager.py) while the runtime boots. The runtime is this very binary, run as
`<binary> -address <containerd socket> warm`, detached from containerd (its own session,
stdio on /dev/null, reparented away from `start`). Launches are rate-limited by the mtime of
a stamp file, and a runtime that finds another holding its lock exits at once, so a burst of
cold starts launches one runtime, and a runtime that cannot boot is retried every few
seconds, not on every container start.
"""

from __future__ import annotations

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


def _due(stamp: str) -> bool:
    """Whether no launch happened in the last RETRY_SECONDS; records this one if so."""
    try:
        if time.time() - os.stat(stamp).st_mtime < RETRY_SECONDS:
            return False
    except FileNotFoundError:
        pass
    try:
        os.makedirs(protocol.CONTROL_DIR, mode=0o700, exist_ok=True)
        with open(stamp, "a"):
            pass
        os.utime(stamp)
    except OSError:
        return False
    return True


def launch(containerd_address: str) -> bool:
    """Launch a warm runtime for this containerd unless one was launched moments ago.
    Returns whether it launched one. Never raises for a failed launch: `start` goes on cold."""
    if not _due(protocol.control_path(containerd_address, ".launched")):
        return False
    # The padding argument leaves room in the runtime's argv for its daemons' titles.
    argv = [*self_argv(), "-address", containerd_address, "warm", "-title-room", "." * TITLE_ROOM]
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # the intermediate: a new session, then the runtime, then gone
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.execve(argv[0], argv, containerd_environment())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True
