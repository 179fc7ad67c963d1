"""The daemon's event loop: the ttrpc Task server, the event publisher, the task logic.

shim/daemon.py forks the zygote and then imports this module (the heavy imports live here, so
that they load while the zygote loads wasmtime). `run` serves until the Shutdown RPC finds no
container left, or until SIGTERM/SIGINT, then stops accepting, lets calls in flight answer,
flushes queued events, removes the socket file and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

from runtimes.base import Runtime
from shim.events import Publisher
from shim.task.service import SERVICE, ProtoEvents, TaskService
from shim.task.tasks import Tasks
from shim.ttrpc.server import Server
from shim.zygote import ZygoteClient

if TYPE_CHECKING:
    from shim.manager import ShimOptions

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "/var/lib/containerd-shim-wasmtime/cache"


def run(
    opts: ShimOptions,
    listener: socket.socket,
    zygote_pid: int,
    zygote_sock: socket.socket,
    runtime: Runtime,
) -> int:
    """Serve until shutdown; returns the process exit code."""
    return asyncio.run(_serve(opts, listener, zygote_pid, zygote_sock, runtime))


async def _serve(
    opts: ShimOptions,
    listener: socket.socket,
    zygote_pid: int,
    zygote_sock: socket.socket,
    runtime: Runtime,
) -> int:
    ttrpc_address = os.environ.get("TTRPC_ADDRESS") or opts.address + ".ttrpc"
    cache_dir = os.environ.get("WASMTIME_SHIM_CACHE_DIR", DEFAULT_CACHE_DIR) or None
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    socket_path = listener.getsockname()

    publisher = Publisher(ttrpc_address, opts.namespace)
    publisher.start()
    tasks: Tasks | None = None

    def on_exit(pid: int, status: int) -> None:
        if tasks is not None:
            tasks.on_process_exit(pid, status)

    zygote = ZygoteClient(zygote_pid, zygote_sock, on_exit)
    zygote.start()
    tasks = Tasks(runtime, zygote, ProtoEvents(publisher.publish), cache_dir=cache_dir)
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
    # The path goes first: a `start` for this group from now on must bind a new socket, not
    # be handed a shim that is exiting (and a later unlink could hit the new shim's socket).
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
    if kill_first:
        await tasks.kill_everything()
    await asyncio.sleep(0.05)  # let the Shutdown reply reach containerd before we close
    await server.shutdown(grace=2.0)
    await publisher.close()
    zygote.close()
    return 0
