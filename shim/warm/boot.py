"""The warm runtime's boot (`<shim> -address A [-lock-fd N] warm`).

Take this containerd's lock (another live runtime holds it: exit at once; a `start` that
launched us passes it already taken); import what a pod daemon, a spawner and a container
process use (`_preload`), and create the shared wasmtime Engine (`Runtime.warm()`);
`gc.freeze()`, so that the garbage collector of a forked process never writes to the pages
it shares with us; bind the control socket under a temporary name and rename it over the old
one (a dead runtime's socket is replaced atomically, never missing); record our pid; serve
(shim/warm/server.py). A boot that fails leaves `<key>.failed`, which holds launches off for
a while (shim/warm/launch.py). The runtime logs to `<key>.log` beside its socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import logging.handlers
import os
import signal

from runtimes.wasmtime import WasmtimeRuntime
from shim import proctitle
from shim.warm import protocol
from shim.warm.identity import build_identity
from shim.warm.launch import take_lock
from shim.warm.server import WarmRuntime

log = logging.getLogger(__name__)

LOG_BYTES = 1 << 20


def _setup_logging(path: str) -> None:
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _preload() -> None:
    """What a daemon, a spawner and a container process import, loaded once here so that
    every one of them shares it, the gRPC client of wasm-layer images included
    (shim/oci/content.py: every container of `wasmtime-shim build`'s default image format
    needs it, and importing it costs a daemon ~50 ms at Create). Importing grpc starts no
    thread and, unless GRPC_ENABLE_FORK_SUPPORT is set, registers no fork handler; only its
    channels hold threads, and the daemon opens them after its fork, in a worker thread."""
    import shim.oci.content  # (grpc and the three containerd stubs)
    import shim.serve  # noqa: F401  (the daemon: asyncio, protobuf, ttrpc, the task layer)
    from runtimes.wasmtime import run  # noqa: F401
    from shim.api.cgroups.v1 import metrics_pb2  # noqa: F401  (Stats)
    from shim.api.cgroups.v2 import metrics_pb2 as _  # noqa: F401
    from shim.api.runtimeoptions.v1 import api_pb2  # noqa: F401  (CRI's runtime options)


def main(containerd_address: str, lock_fd: int | None = None) -> int:
    """The runtime's main (`<shim> -address A [-lock-fd N] warm`); see the module docstring.
    `lock_fd`: the lock, taken already by the `start` that launched us."""
    if lock_fd is not None:
        os.set_inheritable(lock_fd, False)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: the same file
            lock = lock_fd
        except OSError:
            return 0
    else:
        taken = take_lock(containerd_address)
        if taken is None:
            return 0  # another runtime serves this containerd
        lock = taken
    os.chdir("/")
    proctitle.set_title([proctitle.program(), "-address", containerd_address, "warm"])
    _setup_logging(protocol.control_path(containerd_address, ".log"))
    server: WarmRuntime | None = None
    try:
        runtime = WasmtimeRuntime()
        _preload()
        runtime.warm()
        server = WarmRuntime(containerd_address, runtime, build_identity(), lock)
        gc.collect()
        gc.freeze()
        server.bind()
        with open(protocol.control_path(containerd_address, ".pid"), "w") as f:
            f.write(str(os.getpid()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_, s=server: s.retire("signal"))
        log.info(
            "serving %s for containerd %s (%s)", server.path, containerd_address, server.identity
        )
        server.serve()
        return 0
    except Exception:
        log.exception("the warm runtime failed")
        with (
            contextlib.suppress(OSError),
            open(protocol.control_path(containerd_address, ".failed"), "w"),
        ):
            pass  # launchers hold off for a while (shim/warm/launch.py)
        return 1
    finally:
        if server is not None:
            server.release_lock()
        else:
            os.close(lock)
