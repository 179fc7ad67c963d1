"""What `ps` shows for a process forked from another program's image.

A pod daemon is forked from the warm runtime, so it would show the runtime's command line
(`... -address A warm`) and every daemon would look alike. containerd's own shims show
`-namespace NS -id ID -address A`, and operators (and the test suite's leak finder) tell
them apart by that. `set_title` writes such an argument list over the process's original
argv area, NUL-separated as a real one, when it fits; the warm runtime is launched with a
padding argument (shim/warm/launch.py) so that it does, and clears it from its own title at
boot. A title
that does not fit is written as one line over the environment area that follows, which the
kernel then reads as the rest of the command line; `/proc/PID/environ` is garbage then,
which is harmless: Python copied the environment at start-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

from shim import libc
from shim.procfs import stat_fields

PR_SET_NAME = 15


def _areas() -> tuple[int, int, int] | None:
    """(arg_start, arg_end, env_end) of this process, from /proc/self/stat (fields 48-51)."""
    fields = stat_fields("self")
    if fields is None:
        return None
    try:
        arg_start, arg_end, _env_start, env_end = (int(x) for x in fields[45:49])
    except (ValueError, IndexError):
        return None
    return arg_start, arg_end, env_end


def set_title(args: list[str], comm: str = "containerd-shim") -> None:
    """Show `args` as this process's command line (cut to the room there is)."""
    name = ctypes.create_string_buffer(comm.encode()[:15])
    with contextlib.suppress(OSError):
        libc.prctl(PR_SET_NAME, ctypes.addressof(name))
    areas = _areas()
    if areas is None:
        return
    arg_start, arg_end, env_end = areas
    data = "\0".join(args).encode("utf-8", "replace")
    if len(data) < arg_end - arg_start:  # fits the argv area: NUL-pad it
        data += b"\0" * (arg_end - arg_start - len(data))
    else:  # spills into the environment area: one line, ended by a NUL
        room = env_end - arg_start - 1
        if room <= 0:
            return
        data = data.replace(b"\0", b" ")[:room] + b"\0"
    ctypes.memmove(arg_start, data, len(data))


def program() -> str:
    """The shim's own path, as containerd ran it (the binary, or the venv's script)."""
    return os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "containerd-shim"
