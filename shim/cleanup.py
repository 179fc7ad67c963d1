"""`delete` after a crash: undo what a container's held record lists, and nothing else.

The record (shim/bundle.py) names what the daemon acquired and had not released when it
died: a native container's runc state, the container process (pid and start time, so a
recycled pid is never hit), the cgroup the shim created, the rootfs it mounted. Every step
runs even when an earlier one failed, and each failure is reported on stderr, which
containerd logs: this is the only cleanup there is after a crash, and the rootfs mount above
all must go, or containerd cannot remove the bundle. Only a failed unmount fails the command,
and it keeps the record, so that containerd's next `delete` tries again. The pod daemon's
socket is removed if nothing accepts on it any more (its daemon died before it could), so
that the next `start` of the pod binds a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from shim import bundle as bundle_files
from shim.options import ShimOptions

RUNTIME_TIMEOUT = 30.0


def undo(opts: ShimOptions, bundle: str, held: dict[str, str]) -> int:
    """Undo `held`; the pid of the container process it named (0 if none)."""

    def step(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as e:
            sys.stderr.write(f"containerd-shim-wasmtime-v1 delete {opts.id}: {what}: {e}\n")

    pid, _, started = held.get(bundle_files.PID, "").partition(" ")
    step("native container", lambda: _delete_native(opts, bundle, held))
    step("process", lambda: _kill(int(pid or 0), started))
    step("cgroup", lambda: _remove_cgroup(held))
    unmount_error: Exception | None = None
    if held.get(bundle_files.ROOTFS):
        from shim.oci import mounts

        try:
            mounts.unmount_all(held[bundle_files.ROOTFS])
        except Exception as e:  # Internal, with the kernel's reason
            unmount_error = e
    step("socket", lambda: _remove_dead_socket(bundle))
    if unmount_error is not None:
        raise unmount_error  # the record stays, for containerd's next delete to retry
    step("held record", lambda: bundle_files.write_held(bundle, {}))
    return int(pid or 0)


def _delete_native(opts: ShimOptions, bundle: str, held: dict[str, str]) -> None:
    if not held.get(bundle_files.NATIVE):
        return
    from shim.task.native import NativeOptions, runtime_argv

    binary, _, root = held[bundle_files.NATIVE].partition(" ")
    argv = runtime_argv(NativeOptions(binary=binary, root=root), opts.namespace, bundle)
    subprocess.run(
        [*argv, "delete", "--force", opts.id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=RUNTIME_TIMEOUT,
        check=False,
    )


def _kill(pid: int, started: str) -> None:
    if pid and started and bundle_files.start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_cgroup(held: dict[str, str]) -> None:
    if not held.get(bundle_files.CGROUP):
        return
    from shim.cgroups import Cgroup

    cg = Cgroup.load(held[bundle_files.CGROUP], owned=True)
    if cg is not None:
        cg.kill_all(signal.SIGKILL)
        cg.remove()


def _remove_dead_socket(bundle: str) -> None:
    address = bundle_files.read_address(bundle)
    if not address.startswith("unix://"):
        return
    from shim.daemon import accepts

    path = address[len("unix://") :]
    if os.path.exists(path) and not accepts(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
