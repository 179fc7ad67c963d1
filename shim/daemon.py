"""The long-lived shim process: serves the Task API until the last container is gone.

`start` (shim/manager.py) binds the group's socket and forks; the child calls `main` here.
Forking instead of re-executing the binary saves a whole interpreter start on every container
start, and the order below is chosen for the same reason: the zygote is forked first, before
this process imports protobuf, asyncio and the task service, so that the zygote's import of
wasmtime runs on the other core while this process loads the rest. Only then: logging to the
bundle's `log` FIFO, the asyncio loop with the ttrpc server, the event publisher and the task
logic. Shutdown (the RPC, when no task remains, or SIGTERM/SIGINT) stops accepting, lets calls
in flight answer, flushes queued events, removes the socket file and exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from typing import TYPE_CHECKING

from runtimes.wasmtime import WasmtimeRuntime
from shim import logs
from shim.zygote import fork_zygote

if TYPE_CHECKING:
    from shim.manager import ShimOptions

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def main(opts: ShimOptions, listener: socket.socket) -> int:
    """The daemon's main, in the process `start` forked; returns its exit code.

    Logging comes first (it is cheap), so that even a failure to import or to fork reaches
    containerd's log: this process has no stderr."""
    logs.setup(os.getcwd(), opts.id, opts.debug)
    try:
        # Native containers' init processes (runc double-forks them) must come back to us,
        # so that we can reap them and learn their exit status.
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("cannot become a child subreaper; native containers' exits are unknown")
        runtime = WasmtimeRuntime()
        zygote_pid, zygote_sock = fork_zygote(runtime, close=(listener.fileno(),))

        from shim import serve  # only now, while the zygote loads wasmtime (module docstring)

        return serve.run(opts, listener, zygote_pid, zygote_sock, runtime)
    except Exception:
        log.exception("the shim daemon failed")
        return 1
