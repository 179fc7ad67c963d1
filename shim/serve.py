"""The pod daemon's event loop: the ttrpc Task server, the event publisher, the task logic.

shim/daemon.py forks the spawner and then calls `run`, which serves until the Shutdown RPC
finds no container left, or until SIGTERM/SIGINT, then stops accepting, lets calls in flight
answer, flushes queued events, removes the socket file and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket

from runtimes.base import DEFAULT_CACHE_LIMIT, CacheSettings, Runtime
from shim.events import Publisher
from shim.options import ShimOptions
from shim.proc.client import SpawnerClient
from shim.proc.reaper import Reaper
from shim.proc.spawner import SpawnerCommand
from shim.task.service import SERVICE, ProtoEvents, TaskService
from shim.task.supervisor import Host
from shim.task.tasks import Tasks
from shim.ttrpc.server import Server

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "/var/lib/containerd-shim-wasmtime/cache"
CACHE_DIR_ENV = "WASMTIME_SHIM_CACHE_DIR"
CACHE_LIMIT_ENV = "WASMTIME_SHIM_CACHE_SIZE"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """ "2G", "512M", "1.5GiB", "1048576" -> bytes (units are powers of 1024). Raises
    ValueError for anything else ("inf", "-1G", "2X")."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 512M or 2G")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def cache_settings(env: dict[str, str] | os._Environ[str]) -> CacheSettings | None:
    """The compile cache from the environment containerd gave the shim: the directory
    (`WASMTIME_SHIM_CACHE_DIR`, empty disables the cache) and its bound
    (`WASMTIME_SHIM_CACHE_SIZE`, e.g. `2G`, the default)."""
    directory = env.get(CACHE_DIR_ENV, DEFAULT_CACHE_DIR)
    if not directory:
        return None
    limit = DEFAULT_CACHE_LIMIT
    if env.get(CACHE_LIMIT_ENV):
        try:
            limit = parse_size(env[CACHE_LIMIT_ENV])
        except ValueError as e:
            log.warning("%s: %s; the cache keeps its default bound, 2G", CACHE_LIMIT_ENV, e)
    return CacheSettings(dir=os.path.abspath(directory), limit=limit)


def run(
    opts: ShimOptions,
    listener: socket.socket,
    spawner_pid: int,
    spawner_sock: socket.socket,
    runtime: Runtime,
    spawner_command: SpawnerCommand | None = None,
) -> int:
    """Serve until shutdown; returns the process exit code. `spawner_command` starts a new
    spawner when this one dies (shim/proc/client.py)."""
    return asyncio.run(_serve(opts, listener, spawner_pid, spawner_sock, runtime, spawner_command))


async def _serve(
    opts: ShimOptions,
    listener: socket.socket,
    spawner_pid: int,
    spawner_sock: socket.socket,
    runtime: Runtime,
    spawner_command: SpawnerCommand | None,
) -> int:
    ttrpc_address = os.environ.get("TTRPC_ADDRESS") or opts.address + ".ttrpc"
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    socket_path = listener.getsockname()

    publisher = Publisher(ttrpc_address, opts.namespace)
    publisher.start()
    reaper = Reaper()
    reaper.start()
    reaper.claim(spawner_pid)  # the spawner's end is the client's to notice
    spawner = SpawnerClient(spawner_pid, spawner_sock, reaper, spawner_command)
    spawner.start()
    host = Host(
        runtime=runtime,
        spawner=spawner,
        reaper=reaper,
        containerd_address=opts.address,
        cache=cache_settings(os.environ),
        grpc_address=opts.address,
    )
    tasks = Tasks(host, ProtoEvents(publisher.publish))
    kill_first = False

    def request_shutdown(now: bool) -> None:
        nonlocal kill_first
        kill_first = kill_first or now
        loop.call_soon(done.set)  # after the Shutdown answer has been queued

    service = TaskService(tasks, opts.namespace, request_shutdown)
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
    spawner.close()
    reaper.close()
    return 0
