"""The two short-lived commands containerd runs: `start` and `delete`.

`start` hands the request to this containerd's warm runtime (shim/warm/), which forks the pod
daemon (or finds the live one) and answers with the address to print. When no runtime
answers, or one of another build does (it retires), `start` launches a new one in the
background and serves this container cold: it forks the daemon itself, through the same
code the runtime uses (shim/daemon.py). containerd reads stdout and stderr together and dials
what it read exactly once, so: nothing on stderr, no newline, and the socket is listening
before we print.

`delete` runs after every task deletion (containerd 1.6: after every disconnect of a shim)
and after a shim crash. The daemon removes the bundle's held record once it has released
everything, so usually there is nothing to do but print the binary DeleteResponse; a record
left behind means the daemon died holding something, and shim/cleanup.py undoes exactly that.

Both paths import only light standard-library modules until they know they need more: they
run on every container's start and removal.
"""

from __future__ import annotations

import os
import time

from shim import bundle as bundle_files
from shim.options import ShimOptions

DELETE_EXIT_STATUS = 137  # 128 + SIGKILL, what runc's shim reports: the process is killed


def start(opts: ShimOptions) -> str:
    """The address of the daemon that serves this container's group (see the docstring)."""
    from shim.warm import client, launch
    from shim.warm.identity import build_identity

    bundle = os.getcwd()
    fields = [
        ("id", opts.id),
        ("namespace", opts.namespace),
        ("address", opts.address),
        ("publish_binary", opts.publish_binary),
        ("bundle", bundle),
        ("debug", "1" if opts.debug else "0"),
        ("identity", build_identity()),
    ]
    env = launch.containerd_environment()
    fields += [("env", f"{k}={v}") for k, v in env.items()]
    try:
        reply = client.call(opts.address, "start", fields)
    except client.Unreachable:
        reply = None
    if reply is not None and reply.op == "ok":
        return reply.get("address")
    if reply is None or reply.op == "retire":
        launch.launch(opts.address)
    from shim import daemon  # cold: this process forks the daemon (and imports what it needs)

    address, _pid = daemon.spawn(opts, bundle, env)  # the daemon outlives us: init reaps it
    return address


def delete(opts: ShimOptions) -> bytes:
    """Clean up what one container still holds (nothing, after a normal Delete); the
    DeleteResponse to print."""
    bundle = opts.bundle or os.getcwd()
    held = bundle_files.read_held(bundle)
    pid = 0
    if held:
        from shim import cleanup

        pid = cleanup.undo(opts, bundle, held)
    return delete_response(pid, DELETE_EXIT_STATUS, time.time_ns())


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
    would cost more than the rest of it. tests/unit/test_manager.py checks it against
    protobuf."""
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
