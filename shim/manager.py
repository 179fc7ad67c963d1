"""The two short-lived commands containerd runs: `start` and `delete`.

`start` decides which shim serves a container (one per pod: the group id), makes sure a daemon
listens on that group's socket, records the address in the bundle and prints it. containerd
reads stdout and stderr together and dials what it read exactly once, so: nothing on stderr,
no newline, and the socket is listening before we print.

`delete` runs after every task deletion and after a shim crash. It cleans up what belongs to
THIS container only (its process, its rootfs mount, its cgroup), because the shim it shares
with the rest of the pod may still be serving them, and prints a binary DeleteResponse.

This module is imported on every container start, so it imports only the standard library and
light project modules; protobuf is loaded by `delete` alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from shim.oci import spec as oci_spec

SOCKET_ROOT = "/run/containerd"
ADDRESS_FILE = "address"
PID_FILE = "init.pid"
MAX_SOCKET_PATH = 106
DELETE_EXIT_STATUS = 128 + signal.SIGKILL


@dataclass(frozen=True, slots=True)
class ShimOptions:
    """The flags containerd passes to every invocation of the binary."""

    namespace: str
    address: str  # containerd's gRPC socket path
    publish_binary: str
    id: str
    bundle: str
    debug: bool


def socket_address(containerd_address: str, namespace: str, group: str) -> str:
    """The group's socket, computed exactly as containerd's shim package does."""
    digest = hashlib.sha256(os.path.join(containerd_address, namespace, group).encode())
    return f"unix://{SOCKET_ROOT}/s/{digest.hexdigest()}"


def group_address(opts: ShimOptions, bundle: str) -> str:
    """The socket of the shim serving this container's group (its pod, else itself)."""
    try:
        annotations = oci_spec.read_document(bundle).get("annotations") or {}
    except Exception:  # no readable config.json: the container is its own group
        annotations = {}
    group = oci_spec.group_id(annotations, opts.id)
    return socket_address(opts.address, opts.namespace, group)


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def _listen(path: str) -> socket.socket | None:
    """A listening socket at `path`, or None when a live shim already owns it."""
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
            if _accepts(path):
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its shim is gone
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"{path} is in use and could not be replaced")


def write_atomic(path: str, data: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def start(opts: ShimOptions) -> str:
    """Ensure a daemon serves this container's group; return the address to print."""
    bundle = os.getcwd()
    address = group_address(opts, bundle)
    path = address[len("unix://") :]
    listener = _listen(path)
    if listener is not None:
        try:
            _fork_daemon(opts, listener)
        except BaseException:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    write_atomic(os.path.join(bundle, ADDRESS_FILE), address)
    return address


def _fork_daemon(opts: ShimOptions, listener: socket.socket) -> None:
    """Fork the daemon, detached from containerd; returns in the parent only.

    The child leaves containerd's session and process group, and swaps the stdio it inherited
    for /dev/null: if it held containerd's stdout pipe, containerd's CombinedOutput would wait
    for the daemon to exit. Every other inherited fd is closed but the listener.
    """
    pid = os.fork()
    if pid:
        listener.close()
        return
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = listener.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        from shim import daemon

        code = daemon.main(opts, listener)
    finally:
        os._exit(code)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


def write_pid_file(bundle: str, pid: int) -> None:
    """Record the container process as "pid starttime", so that `delete` can kill what is
    left after a shim crash without ever hitting a recycled pid."""
    write_atomic(os.path.join(bundle, PID_FILE), f"{pid} {_start_time(pid)}")


def read_pid_file(bundle: str) -> tuple[int, bool]:
    """(pid, still the same live process?) from the bundle's pid file; (0, False) if none."""
    try:
        with open(os.path.join(bundle, PID_FILE)) as f:
            parts = f.read().split()
        pid = int(parts[0])
    except (OSError, ValueError, IndexError):
        return 0, False
    started = parts[1] if len(parts) > 1 else None
    return pid, bool(started) and _start_time(pid) == started


def _remove_dead_socket(opts: ShimOptions, bundle: str) -> None:
    """A shim that died (SIGKILL, OOM) could not remove its socket: do it for it, but only
    when nothing accepts there any more, since the rest of the pod may still be served."""
    path = group_address(opts, bundle)[len("unix://") :]
    if os.path.exists(path) and not _accepts(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def delete(opts: ShimOptions) -> bytes:
    """Clean up one container after its task is gone (or its shim died); the DeleteResponse.

    Every step runs even when an earlier one failed (each failure is reported on stderr,
    which containerd logs): after a shim crash this is the only cleanup there is, and the
    rootfs mount above all must go, or containerd cannot remove the bundle. Only a failed
    unmount fails the command."""
    from shim.cgroups import Cgroup
    from shim.oci import mounts
    from shim.task import native

    bundle = opts.bundle or os.getcwd()

    def step(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as e:
            sys.stderr.write(f"containerd-shim-wasmtime-v1 delete {opts.id}: {what}: {e}\n")

    def delete_native() -> None:
        runc = native.from_bundle(bundle, opts.namespace)
        if runc is not None:
            runc.delete(opts.id, bundle)

    pid, alive = read_pid_file(bundle)

    def kill_process() -> None:
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove_cgroup() -> None:
        cgroups_path = oci_spec.load(bundle).cgroups_path
        cg = Cgroup.load(cgroups_path) if cgroups_path else None
        if cg is not None:
            cg.kill_all(signal.SIGKILL)
            cg.remove()

    step("native container", delete_native)
    step("process", kill_process)
    step("cgroup", remove_cgroup)
    mounts.unmount_all(os.path.join(bundle, "rootfs"))
    step("socket", lambda: _remove_dead_socket(opts, bundle))
    step("pid file", lambda: _unlink_if_there(os.path.join(bundle, PID_FILE)))
    return delete_response(pid, DELETE_EXIT_STATUS, time.time_ns())


def _unlink_if_there(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def delete_response(pid: int, exit_status: int, exited_at_ns: int) -> bytes:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp}, encoded
    by hand: `delete` runs on the path of every container's removal, and importing protobuf
    would add a fifth to its cost. tests/unit/test_manager.py checks it against protobuf."""
    seconds, nanos = divmod(exited_at_ns, 1_000_000_000)
    ts = b""
    if seconds:
        ts += b"\x08" + _varint(seconds)
    if nanos:
        ts += b"\x10" + _varint(nanos)
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    return out + b"\x1a" + _varint(len(ts)) + ts
