"""The WASI context of one container process, built from its RunConfig and nothing else.

- argv is `process.args` exactly, args[0] included as written (with any "#func" suffix), the
  way a native process sees its argv[0].
- The environment is `process.env` exactly. Nothing of the shim's own environment leaks in.
- stdio is inherited: the container process has already put containerd's FIFOs on fds 0,
  1 and 2 (shim/proc/child.py).
- Preopens are given in order, read-only ones with read-only directory and file permissions
  (wasmtime's `fs_mutable=False`). A container process has one, `/`, taken after it pivoted
  into its rootfs, so the kernel enforces every mount's options (shim/confine/); the
  standalone tool preopens the image's rootfs at "/" and its `-v` directories.

The working directory. WASI preview 1 has no notion of one: wasi-libc (and Rust's std, which
uses it) starts with a cwd of "/" and resolves a relative path by prefixing that cwd and
picking the longest matching preopen. Preopening `process.cwd` again under the name "." does
not help: wasi-libc normalises "." and "/" to the same empty prefix and the later preopen
shadows the other for *every* path, absolute ones included. Nor does wasi-libc read `PWD`.
So `process.cwd` decides where a relative entrypoint is found (see `entry.py`) and the host
cwd of the process, but inside the guest relative paths resolve against "/", as under
`wasmtime run --dir /`. Setting `PWD` is left to the image's env, unmodified.
"""

from __future__ import annotations

import os

import wasmtime

from runtimes.base import RunConfig
from shim.errors import FailedPrecondition


def split_env(env: tuple[str, ...]) -> list[tuple[str, str]]:
    """Split "KEY=VALUE" -> (KEY, VALUE), in order, duplicates kept (the guest sees what the spec
    says). An entry without "=" is passed as a name with an empty value."""
    pairs: list[tuple[str, str]] = []
    for item in env:
        name, _, value = item.partition("=")
        pairs.append((name, value))
    return pairs


def wasi_config(cfg: RunConfig) -> wasmtime.WasiConfig:
    """Build the WasiConfig. Raises FailedPrecondition naming a preopen that cannot be used."""
    for s in (*cfg.args, *cfg.env):
        if "\0" in s:
            raise FailedPrecondition(f"NUL byte in args/env entry {s!r}")
    wasi = wasmtime.WasiConfig()
    wasi.argv = list(cfg.args)
    wasi.env = split_env(cfg.env)
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    for p in cfg.preopens:
        if not os.path.isdir(p.host):
            raise FailedPrecondition(f"mount for {p.guest}: {p.host} is not a directory")
        try:
            wasi.preopen_dir(p.host, p.guest, not p.readonly)
        except wasmtime.WasmtimeError as e:
            raise FailedPrecondition(f"cannot preopen {p.host} at {p.guest}: {e}") from e
    return wasi
