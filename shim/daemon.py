"""A pod daemon: its socket, the fork that makes it, and its boot.

Serving `start` means, wherever it runs (in the warm runtime, the usual case, or in `start`
itself, cold): `bind` finds the container's group (its pod; shim/oci/spec.py), binds that
group's socket (or finds a live daemon on it) and records the address in the bundle; then
`fork_daemon` forks the daemon. The socket listens from `bind` on, because containerd dials
the printed address exactly once; so the warm runtime answers `start` between the two, and
the fork overlaps with `start`'s exit and containerd's dial.

The daemon is a child of whoever forked it, in a session of its own: the warm runtime reaps
it when it ends, and a daemon outlives a runtime that crashes or retires (it is reparented,
as it is when a cold `start` exits). Its stdio is /dev/null (it must not hold containerd's
output pipe of `start`), it holds no descriptor but its listening socket, and its
environment is the one containerd gave `start`.

The spawner is forked first of all, while the daemon is single-threaded and has written as
little memory as it ever will (every page written before that fork would end up copied in
both). Then `main`, the daemon's body: logging to the bundle's `log` FIFO (this process has
no stderr), a child subreaper (native containers' init processes come back to it), and the
event loop (shim/serve.py). A failure to fork the spawner never reaches containerd's log:
the daemon exits, and containerd's Create fails on the closed socket. A spawner that dies
later cannot be forked again (the daemon has threads by then): `SpawnerCommand` starts its
replacement by posix_spawn of the shim's own program (shim/proc/spawner.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import socket
from collections.abc import Mapping

from runtimes.wasmtime import WasmtimeRuntime
from shim import bundle as bundle_files
from shim import libc, logs, proctitle
from shim.oci import spec as oci_spec
from shim.options import ShimOptions
from shim.proc.spawner import SpawnerCommand, fork_spawner

log = logging.getLogger(__name__)

SOCKET_ROOT = "/run/containerd"
MAX_SOCKET_PATH = 106


def socket_address(containerd_address: str, namespace: str, group: str) -> str:
    """The group's socket, computed exactly as containerd's shim package does."""
    digest = hashlib.sha256(os.path.join(containerd_address, namespace, group).encode())
    return f"unix://{SOCKET_ROOT}/s/{digest.hexdigest()}"


def group_address(opts: ShimOptions, bundle: str) -> str:
    """The socket of the daemon serving this container's group (its pod, else itself)."""
    try:
        annotations = oci_spec.read_document(bundle).get("annotations")
    except Exception:  # no readable config.json: the container is its own group
        annotations = None
    if not isinstance(annotations, dict):
        annotations = {}  # malformed: its own group, and Create refuses it with the reason
    strings = {k: v for k, v in annotations.items() if isinstance(v, str)}
    group = oci_spec.group_id(strings, opts.id)
    return socket_address(opts.address, opts.namespace, group)


def accepts(path: str) -> bool:
    """Whether a daemon is alive behind the socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def _listen(path: str) -> socket.socket | None:
    """A listening socket at `path`, or None when a live daemon already owns it."""
    if len(path) > MAX_SOCKET_PATH:
        raise OSError(errno.ENAMETOOLONG, f"socket path {path} is longer than {MAX_SOCKET_PATH}")
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRINUSE:
                raise
            if accepts(path):
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its daemon is gone
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"{path} is in use and could not be replaced")


def bind(opts: ShimOptions, bundle: str) -> tuple[str, socket.socket | None]:
    """The address of this container's group, listening from now on, recorded in the
    bundle; with the listener when a daemon must be forked for it (`fork_daemon`), None when
    a live one serves the group already."""
    address = group_address(opts, bundle)
    listener = _listen(address[len("unix://") :])
    try:
        bundle_files.write_address(bundle, address)
    except BaseException:
        if listener is not None:
            _unbind(listener)
        raise
    return address, listener


def _unbind(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        os.unlink(listener.getsockname())
    listener.close()


def fork_daemon(
    opts: ShimOptions, bundle: str, env: Mapping[str, str], listener: socket.socket
) -> int:
    """Fork the daemon that serves `listener`; its pid. The caller's copy of the listener is
    closed either way; when the fork fails its socket file goes too, so containerd's
    connection fails instead of waiting for a daemon that will never come."""
    try:
        pid = _fork(opts, bundle, env, listener)
    except BaseException:
        _unbind(listener)
        raise
    listener.close()
    return pid


def spawn(opts: ShimOptions, bundle: str, env: Mapping[str, str]) -> tuple[str, int]:
    """Make sure a daemon serves this container's group: (the address for `start` to print,
    the pid of the daemon forked now, or 0 when a live one serves the group already)."""
    address, listener = bind(opts, bundle)
    return address, fork_daemon(opts, bundle, env, listener) if listener is not None else 0


def _fork(opts: ShimOptions, bundle: str, env: Mapping[str, str], listener: socket.socket) -> int:
    """Fork the daemon (see the module docstring); returns its pid, in the caller only."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # The warm runtime's SIGTERM/SIGINT handlers would retire *its* state; until the
        # daemon's loop installs its own, a signal ends the daemon as it would any process.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        logs.forget()  # the parent's log files, closed by their objects, before closerange
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = listener.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        proctitle.set_title(
            [
                proctitle.program(),
                "-namespace",
                opts.namespace,
                "-id",
                opts.id,
                "-address",
                opts.address,
            ]
        )
        os.chdir(bundle)
        # The spawner first, while this process has touched as little memory as it ever
        # will: every page written before this fork would be copied into both processes.
        runtime = WasmtimeRuntime()
        spawner = fork_spawner(
            runtime,
            close=(listener.fileno(),),
            on_start=lambda: logs.setup(bundle, opts.id, opts.debug),
        )
        os.environ.clear()
        os.environ.update(env)
        code = main(opts, bundle, listener, runtime, spawner)
    finally:
        os._exit(code)


def main(
    opts: ShimOptions,
    bundle: str,
    listener: socket.socket,
    runtime: WasmtimeRuntime,
    spawner: tuple[int, socket.socket],
) -> int:
    """The daemon's body; returns its exit code (module docstring for the order)."""
    logs.setup(bundle, opts.id, opts.debug)
    try:
        try:
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        except OSError as e:
            log.warning("cannot become a child subreaper (%s); native exits are unknown", e)

        from shim import serve  # loaded already when forked from the warm runtime

        # A spawner that dies is replaced by one this command starts (shim/proc/client.py).
        command = SpawnerCommand.of_daemon(opts, bundle)
        return serve.run(opts, listener, spawner[0], spawner[1], runtime, command)
    except Exception:
        log.exception("the shim daemon failed")
        return 1
