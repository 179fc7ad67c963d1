"""Native (non-wasm) containers through the node's OCI runtime: runc by default, or crun.

Inside a Kubernetes pod a RuntimeClass sends every container of the pod to this shim: the pause
sandbox and native sidecars too. Those run exactly as containerd's runc shim runs them: `runc
create` with the bundle (its own namespaces, cgroup, mounts, seccomp from config.json) and
`runc start`. The container's init is reparented to the shim (a child subreaper, set in
shim/daemon.py), which watches it through a pidfd and reaps it to learn its exit status.

runc's own error messages go to a JSON log file in the bundle, not to the container's stderr,
and are read back into the error the RPC returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shim.errors import FailedPrecondition, Internal, InvalidArgument, NotFound

log = logging.getLogger(__name__)

DEFAULT_BINARY = "runc"
RUNC_ROOT = "/run/containerd/wasmtime/runc"
RUNC_LOG = "runc.log"
NATIVE_PID_FILE = "native.pid"
STATE_FILE = "native.json"  # which runtime binary and root, for `delete` after a shim crash


@dataclass(frozen=True, slots=True)
class NativeOptions:
    """Runtime options from containerd's config.toml (`[...runtimes.wasmtime.options]`)."""

    binary: str = DEFAULT_BINARY
    root: str = RUNC_ROOT


def parse_options(type_url: str, value: bytes) -> NativeOptions:
    """Read Create's `options` Any. containerd's CRI passes a non-runc shim's options table as
    runtimeoptions.v1.Options: the raw TOML in config_body (1.7+) or a file in config_path."""
    if not type_url:
        return NativeOptions()
    if not type_url.endswith("runtimeoptions.v1.Options"):
        log.debug("ignoring runtime options of type %s", type_url)
        return NativeOptions()
    from shim.api.runtimeoptions.v1 import api_pb2

    opts = api_pb2.Options.FromString(value)
    text = ""
    if opts.config_body:
        text = opts.config_body.decode("utf-8", "replace")
    elif opts.config_path:
        try:
            with open(opts.config_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise InvalidArgument(f"runtime options file {opts.config_path}: {e.strerror}") from e
    return options_from_toml(text)


def options_from_toml(text: str) -> NativeOptions:
    """`BinaryName` (as runc's options spell it) or `native_runtime` picks runc or crun."""
    try:
        table: Mapping[str, Any] = tomllib.loads(text) if text.strip() else {}
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"runtime options are not valid TOML: {e}") from e
    binary = table.get("BinaryName") or table.get("native_runtime") or DEFAULT_BINARY
    root = table.get("Root") or RUNC_ROOT
    if not isinstance(binary, str) or not isinstance(root, str):
        raise InvalidArgument("runtime options BinaryName and Root must be strings")
    return NativeOptions(binary=binary, root=root)


class Runc:
    """Drives the OCI runtime binary for the containers of one namespace."""

    def __init__(self, options: NativeOptions, namespace: str) -> None:
        self.options = options
        self.root = os.path.join(options.root, namespace)

    def _base(self, bundle: str, systemd_cgroup: bool = False) -> list[str]:
        args = [
            self.options.binary,
            "--root",
            self.root,
            "--log",
            os.path.join(bundle, RUNC_LOG),
            "--log-format",
            "json",
        ]
        if systemd_cgroup:
            args.append("--systemd-cgroup")
        return args

    def _run(
        self, bundle: str, args: Sequence[str], *, stdio: Sequence[int] | None = None, **kw: Any
    ) -> None:
        """Run one runtime command to completion (in a worker thread); errors carry its log."""
        cmd = [*self._base(bundle, kw.pop("systemd_cgroup", False)), *args]
        if stdio is None:
            stdin = stdout = stderr = subprocess.DEVNULL
        else:
            stdin, stdout, stderr = stdio
        try:
            proc = subprocess.run(
                cmd, stdin=stdin, stdout=stdout, stderr=stderr, timeout=60, check=False
            )
        except FileNotFoundError:
            raise FailedPrecondition(
                f"the native runtime {self.options.binary!r} is not installed (needed for "
                "non-wasm containers such as the pod sandbox)"
            ) from None
        except subprocess.TimeoutExpired:
            raise Internal(f"{self.options.binary} {args[0]} did not finish in 60s") from None
        if proc.returncode != 0:
            message = last_error(os.path.join(bundle, RUNC_LOG)) or f"exit {proc.returncode}"
            cls = NotFound if "not exist" in message or "not running" in message else Internal
            raise cls(f"{self.options.binary} {args[0]}: {message}")

    def create_and_start(
        self, container_id: str, bundle: str, stdio: Sequence[int], systemd_cgroup: bool
    ) -> int:
        """`create` then `start`; returns the container init's pid. Blocking."""
        pid_file = os.path.join(bundle, NATIVE_PID_FILE)
        with open(os.path.join(bundle, STATE_FILE), "w") as f:
            json.dump({"binary": self.options.binary, "root": self.options.root}, f)
        self._run(
            bundle,
            ["create", "--bundle", bundle, "--pid-file", pid_file, container_id],
            stdio=stdio,
            systemd_cgroup=systemd_cgroup,
        )
        with open(pid_file) as f:
            pid = int(f.read().strip())
        try:
            self._run(bundle, ["start", container_id], systemd_cgroup=systemd_cgroup)
        except BaseException:
            self.delete(container_id, bundle)
            raise
        return pid

    def kill(self, container_id: str, bundle: str, sig: int, all_: bool) -> None:
        self._run(bundle, ["kill", *(["--all"] if all_ else []), container_id, str(sig)])

    def delete(self, container_id: str, bundle: str) -> None:
        """`delete --force`: stops what is left and removes the runtime's state and cgroup."""
        if not os.path.exists(os.path.join(self.root, container_id)):
            return
        with contextlib.suppress(NotFound):
            self._run(bundle, ["delete", "--force", container_id])


def from_bundle(bundle: str, namespace: str) -> Runc | None:
    """The Runc that created this bundle's native container, if one did (for `delete`)."""
    try:
        with open(os.path.join(bundle, STATE_FILE)) as f:
            saved = json.load(f)
        options = NativeOptions(binary=str(saved["binary"]), root=str(saved["root"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Runc(options, namespace)


def last_error(log_path: str) -> str:
    """The last error-level message of a runc/crun JSON log (they log one object per line)."""
    message = ""
    with contextlib.suppress(OSError), open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                message = str(entry.get("msg", ""))
    return message


def watch_exit(pid: int, on_exit: Callable[[int, int], None]) -> None:
    """Call `on_exit(pid, status)` on the loop when the reparented init exits, and reap it."""
    import asyncio  # here, not at module level: `delete` imports this module and needs no loop

    from shim.zygote import exit_code_from_wait_status

    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = -1

    def reap() -> None:
        if pidfd >= 0:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
            code = exit_code_from_wait_status(status)
        except ChildProcessError:  # not reparented to us (no subreaper): status unknown
            log.warning("process %d was not our child; its exit status is unknown", pid)
            code = 255
        on_exit(pid, code)

    if pidfd < 0:
        loop.call_soon(reap)
    else:
        loop.add_reader(pidfd, reap)
