"""What the shim keeps in a container's bundle directory, read by every process that needs it.

- `address`: the pod daemon's socket, written by whoever served `start`; containerd reads it
  to reconnect after a restart.
- the held record (`wasmtime-shim.held`): what the container holds on the host that nobody
  but the shim would clean up: its mounted rootfs, the cgroup the shim created, the pid (and
  start time) of its process, the runc state of a native container. The daemon writes it as
  it acquires those (Create, then Start) and removes it once it has released them all
  (Delete). So `delete`, which containerd runs after every task deletion, finds no record
  and has nothing to do; after a crash it finds exactly what to undo, and touches nothing
  the shim did not create.

Standard library only, no `json` (not even `contextlib`): `start` and `delete` import this on
every container.
Records are `key=value` lines, written to a temporary file and renamed into place.
"""

from __future__ import annotations

import os

from shim.procfs import stat_fields

ADDRESS_FILE = "address"
HELD_FILE = "wasmtime-shim.held"

# Keys of the held record.
ROOTFS = "rootfs"  # a mount point the shim mounted
CGROUP = "cgroup"  # a linux.cgroupsPath whose directories the shim created
PID = "pid"  # "<pid> <start time>" of the container process
NATIVE = "native"  # "<runtime binary> <runtime root>": runc/crun state to delete


def write_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new file, never half."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_address(bundle: str, address: str) -> None:
    write_atomic(os.path.join(bundle, ADDRESS_FILE), address)


def read_address(bundle: str) -> str:
    """The address `start` recorded, or "" when there is none."""
    try:
        with open(os.path.join(bundle, ADDRESS_FILE)) as f:
            return f.read().strip()
    except OSError:
        return ""


def read_held(bundle: str) -> dict[str, str]:
    """The held record; empty when there is none (nothing held)."""
    held: dict[str, str] = {}
    try:
        with open(os.path.join(bundle, HELD_FILE)) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    held[key] = value
    except OSError:
        pass
    return held


def write_held(bundle: str, held: dict[str, str]) -> None:
    """Record what is held; an empty record removes the file."""
    path = os.path.join(bundle, HELD_FILE)
    if not held:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        return
    for key, value in held.items():
        if "\n" in key or "=" in key or "\n" in value:
            raise ValueError(f"held record entry {key!r} cannot be written")
    write_atomic(path, "".join(f"{k}={v}\n" for k, v in held.items()))


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid, it names one process for good, never a later one that got the same pid."""
    fields = stat_fields(pid) or []
    return fields[19].decode() if len(fields) > 19 else ""
