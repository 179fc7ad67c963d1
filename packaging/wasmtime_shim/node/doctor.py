"""`wasmtime-shim doctor`: one line per check, and the fix when a check fails.

The checks follow what containerd needs to run our runtime: the binary where containerd looks
(its own PATH, or the runtime_path of the config), that binary actually starting (`-v`: a
bundle without its `_internal/`, or built for a newer glibc than the node's, is a file that
cannot run), the runtime registered in the config it reads, the config loadable by containerd
itself, containerd answering on the socket named in the output, and the host facts the shim
depends on (cgroup version, wasmtime version). Each check is a function returning a Check, so
a check that cannot run (no containerd binary here) says so instead of failing the rest; the
command exits non-zero when any check failed.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shim import RUNTIME_NAME
from shim.errors import ShimError
from wasmtime_shim.node import config as cfg
from wasmtime_shim.node import files
from wasmtime_shim.node.flavors import Flavor

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Status(enum.Enum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status is Status.FAIL else ""
        return f"{self.status.value:<4} {self.name}: {self.detail}{fix}"


LOAD_TIMEOUT = 30.0  # seconds for `<shim> -v`; a cold start from a slow disk takes ~1 s


@dataclass(frozen=True, slots=True)
class Node:
    flavor: Flavor
    root: Path
    config: str
    handler: str
    address: str = ""  # containerd's socket on the node; "" means the flavor's

    @property
    def socket(self) -> str:
        return self.address or self.flavor.socket


def containerd_path(root: Path) -> tuple[str, str]:
    """(PATH of the running containerd, where it came from); the default when none runs."""
    if root == Path("/"):
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if (proc / "comm").read_text().strip() != "containerd":
                    continue
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for var in env:
                if var.startswith(b"PATH="):
                    return var[5:].decode(errors="replace"), f"containerd pid {proc.name}"
            return DEFAULT_PATH, f"containerd pid {proc.name} (no PATH: default)"
    return DEFAULT_PATH, "default PATH (no running containerd seen)"


def find_binary(node: Node) -> str | None:
    """The node path of the shim containerd would run: runtime_path, else the first on its
    PATH; None when there is none."""
    runtime_path = _runtime_path(node)
    if runtime_path:
        return runtime_path if _executable(node.root, runtime_path) else None
    path, _origin = containerd_path(node.root)
    for d in filter(None, path.split(":")):
        if _executable(node.root, f"{d}/{files.SHIM_NAME}"):
            return f"{d}/{files.SHIM_NAME}"
    return None


def _runtime_path(node: Node) -> str | None:
    try:
        table = cfg.find_runtime(_read(node), node.handler, _default_version(node))
    except (ShimError, OSError):
        return None
    value = table.get("runtime_path") if table is not None else None
    return str(value) if value else None


def check_binary(node: Node) -> Check:
    runtime_path = None
    try:
        table = cfg.find_runtime(_read(node), node.handler, _default_version(node))
        runtime_path = table.get("runtime_path") if table is not None else None
    except (ShimError, OSError):
        pass
    if runtime_path:
        ok = _executable(node.root, str(runtime_path))
        return Check(
            "shim binary",
            Status.OK if ok else Status.FAIL,
            f"runtime_path = {runtime_path}" + ("" if ok else " is not executable"),
            "wasmtime-shim install (or fix runtime_path)",
        )
    path, origin = containerd_path(node.root)
    for d in filter(None, path.split(":")):
        if _executable(node.root, f"{d}/{files.SHIM_NAME}"):
            return Check("shim binary", Status.OK, f"{d}/{files.SHIM_NAME} (PATH of {origin})")
    return Check(
        "shim binary",
        Status.FAIL,
        f"{files.SHIM_NAME} is not on containerd's PATH ({path}; {origin})",
        "wasmtime-shim install --bin-dir DIR with DIR on that PATH",
    )


def check_loads(node: Node) -> Check:
    """Start the binary containerd would run with `-v`: proves the bundle is whole and its
    libraries load on this node (the loader refuses a glibc older than the bundle needs)."""
    binary = find_binary(node)
    if binary is None:
        return Check("shim starts", Status.SKIP, "no shim binary found (see above)")
    real = _resolve(node.root, binary)
    try:
        out = subprocess.run(
            [str(real), "-v"],
            capture_output=True,
            text=True,
            check=False,
            timeout=LOAD_TIMEOUT,
            env={"PATH": DEFAULT_PATH},
        )
    except subprocess.TimeoutExpired:
        return Check(
            "shim starts",
            Status.FAIL,
            f"{binary} -v did not answer within {LOAD_TIMEOUT:.0f}s",
            "reinstall the shim",
        )
    except OSError as e:
        return Check("shim starts", Status.FAIL, f"{binary}: {e.strerror}", "reinstall the shim")
    if out.returncode == 0 and RUNTIME_NAME in out.stdout:
        version = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in out.stdout.splitlines()
                if ln.strip().startswith("Version:")
            ),
            "?",
        )
        return Check("shim starts", Status.OK, f"{binary} -v: version {version}")
    err = (out.stderr or out.stdout).strip().splitlines()
    return Check(
        "shim starts",
        Status.FAIL,
        f"{binary} -v exited {out.returncode}: {err[-1] if err else 'no output'}",
        "reinstall the shim (wasmtime-shim install); a glibc error means the node's is too "
        "old for this build",
    )


def check_containerd_answers(node: Node) -> Check:
    """Something listens on containerd's socket (`ctr version` names the server when there
    is a ctr here). The socket checked is always named: a node may run several containerds."""
    path = files.host(node.root, node.socket)
    where = node.socket if node.root == Path("/") else f"{node.socket} (under {node.root})"
    if not path.is_socket():
        return Check("containerd", Status.FAIL, f"no socket at {where}", "start containerd")
    ctr = shutil.which("ctr")
    if ctr is not None:
        try:
            out = subprocess.run(
                [ctr, "--address", str(path), "--connect-timeout", "5s", "version"],
                capture_output=True,
                text=True,
                check=False,
                timeout=LOAD_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return Check("containerd", Status.FAIL, f"no answer on {where}", "start containerd")
        if out.returncode == 0:
            server = out.stdout.split("Server:", 1)[-1].split()
            version = server[server.index("Version:") + 1] if "Version:" in server else "?"
            return Check("containerd", Status.OK, f"version {version} answers on {where}")
        err = out.stderr.strip().splitlines()
        detail = err[-1] if err else f"ctr exit {out.returncode}"
        return Check("containerd", Status.FAIL, f"{where}: {detail}", "start containerd")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(str(path))
        except OSError as e:
            return Check(
                "containerd", Status.FAIL, f"{where}: {e.strerror or e}", "start containerd"
            )
    return Check("containerd", Status.OK, f"{where} accepts connections (no ctr here)")


def check_config(node: Node) -> Check:
    try:
        doc = _read(node)
    except FileNotFoundError:
        return Check(
            "config", Status.FAIL, f"{node.config} does not exist", "wasmtime-shim install"
        )
    except ShimError as e:
        return Check("config", Status.FAIL, str(e), f"repair {node.config}")
    runtimes = cfg.registered_runtimes(doc, _default_version(node))
    version = cfg.config_version(doc, default=_default_version(node))
    where = cfg.section_name(version, node.handler)
    if runtimes.get(node.handler) == RUNTIME_NAME:
        return Check("config", Status.OK, f"[{where}] in {node.config} (version {version})")
    ours = [h for h, t in runtimes.items() if t == RUNTIME_NAME]
    detail = f"no [{where}] with runtime_type {RUNTIME_NAME!r} in {node.config}"
    if ours:
        detail += f" (registered as {', '.join(ours)}: pass --handler)"
    return Check("config", Status.FAIL, detail, "wasmtime-shim install")


def check_containerd_loads(node: Node) -> Check:
    containerd = shutil.which("containerd") if node.root == Path("/") else None
    if node.flavor.template or node.flavor.name != "containerd":
        return Check("containerd loads config", Status.SKIP, f"{node.flavor.name} renders it")
    if containerd is None:
        return Check("containerd loads config", Status.SKIP, "no containerd binary here")
    out = subprocess.run(
        [containerd, "--config", node.config, "config", "dump"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if out.returncode == 0:
        return Check("containerd loads config", Status.OK, f"{containerd} config dump")
    err = (out.stderr or out.stdout).strip().splitlines()
    return Check(
        "containerd loads config",
        Status.FAIL,
        err[-1] if err else f"exit {out.returncode}",
        f"fix {node.config} (a backup from install ends in .wasmtime-shim.bak)",
    )


def check_cgroups(node: Node) -> Check:
    base = files.host(node.root, "/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return Check("cgroups", Status.OK, "v2 (unified)")
    if (base / "memory").is_dir():
        return Check("cgroups", Status.OK, "v1")
    return Check("cgroups", Status.FAIL, f"no cgroup hierarchy at {base}", "mount cgroup2")


def check_wasmtime(node: Node) -> Check:
    try:
        return Check("wasmtime", Status.OK, importlib.metadata.version("wasmtime"))
    except importlib.metadata.PackageNotFoundError:
        return Check("wasmtime", Status.FAIL, "wasmtime is not bundled", "reinstall the shim")


CHECKS = (
    check_binary,
    check_loads,
    check_config,
    check_containerd_loads,
    check_containerd_answers,
    check_cgroups,
    check_wasmtime,
)


def diagnose(node: Node) -> list[Check]:
    return [check(node) for check in CHECKS]


def _resolve(root: Path, path: str) -> Path:
    """The node's `path` as seen from here, its symlinks followed as the node would (inside
    root: an absolute link target names a node path)."""
    for _ in range(16):
        p = files.host(root, path)
        if not p.is_symlink():
            return p
        target = os.readlink(p)
        path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
    return files.host(root, path)


def _executable(root: Path, path: str) -> bool:
    """Is the node's `path` executable, following symlinks as the node would (inside root)?"""
    p = _resolve(root, path)
    return not p.is_symlink() and p.is_file() and os.access(p, os.X_OK)


def _default_version(node: Node) -> int:
    return 2 if node.flavor.template else 1


def _read(node: Node) -> cfg.TOMLDocument:
    path = files.host(node.root, node.config)
    return cfg.parse(path.read_text(), node.config, template=node.flavor.template)
