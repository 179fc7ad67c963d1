"""The long-lived shim process: serves the Task API until the last container is gone.

`start` (shim/manager.py) re-executes the binary without an action and with the listening
socket as fd 3. Here, in this order: logging to the bundle's `log` FIFO, fork the zygote (before
any thread or event loop exists, see shim/zygote.py), then the asyncio loop with the ttrpc
server, the event publisher and the task logic. Shutdown (the RPC, when no task remains, or
SIGTERM/SIGINT) stops accepting, lets calls in flight answer, flushes queued events, removes
the socket file and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from dataclasses import dataclass

from runtimes.wasmtime import WasmtimeRuntime
from shim import logs
from shim.events import Publisher
from shim.task.service import SERVICE, ProtoEvents, TaskService
from shim.task.tasks import Tasks
from shim.ttrpc.server import Server
from shim.zygote import ZygoteClient, fork_zygote

log = logging.getLogger(__name__)

LISTENER_FD = 3
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
DEFAULT_CACHE_DIR = "/var/lib/containerd-shim-wasmtime/cache"


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    id: str
    namespace: str
    address: str  # containerd's gRPC socket
    ttrpc_address: str  # where Events/Forward goes (TTRPC_ADDRESS)
    debug: bool
    cache_dir: str | None


def run(opts: DaemonOptions) -> int:
    """The daemon's main; returns the process exit code."""
    bundle = os.getcwd()
    logs.setup(bundle, opts.id, opts.debug)
    try:
        listener = socket.socket(fileno=LISTENER_FD)
    except OSError:
        log.error("no listening socket on fd %d: the daemon is started by `start`", LISTENER_FD)
        return 1
    # Native containers' init processes (runc double-forks them) must come back to us, so
    # that we can reap them and learn their exit status.
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become a child subreaper; native containers' exits will be unknown")
    runtime = WasmtimeRuntime()
    zygote_pid, zygote_sock = fork_zygote(runtime)
    try:
        return asyncio.run(_serve(opts, listener, zygote_pid, zygote_sock, runtime))
    except Exception:
        log.exception("the shim daemon failed")
        return 1


async def _serve(
    opts: DaemonOptions,
    listener: socket.socket,
    zygote_pid: int,
    zygote_sock: socket.socket,
    runtime: WasmtimeRuntime,
) -> int:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    socket_path = listener.getsockname()

    publisher = Publisher(opts.ttrpc_address, opts.namespace)
    publisher.start()
    tasks: Tasks | None = None

    def on_exit(pid: int, status: int) -> None:
        if tasks is not None:
            tasks.on_process_exit(pid, status)

    zygote = ZygoteClient(zygote_pid, zygote_sock, on_exit)
    zygote.start()
    tasks = Tasks(runtime, zygote, ProtoEvents(publisher.publish), cache_dir=opts.cache_dir)
    kill_first = False

    def request_shutdown(now: bool) -> None:
        nonlocal kill_first
        kill_first = kill_first or now
        loop.call_soon(done.set)  # after the Shutdown answer has been queued

    service = TaskService(tasks, opts.namespace, request_shutdown, opts.address)
    server = Server()
    server.register_service(SERVICE, service.handlers())
    await server.start(sock=listener)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_shutdown, True)
    log.info("serving the task API on %s", socket_path)

    await done.wait()
    log.info("shutting down")
    if kill_first:
        await tasks.kill_everything()
    await asyncio.sleep(0.05)  # let the Shutdown reply reach containerd before we close
    await server.shutdown(grace=2.0)
    await publisher.close()
    zygote.close()
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
    return 0
