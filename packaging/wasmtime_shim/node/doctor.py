"""`wasmtime-shim doctor`: one line per check, and the fix when a check fails.

The checks follow what containerd needs to run our runtime: the binary where containerd looks
(its own PATH, or the runtime_path of the config), the runtime registered in the config it
reads, the config loadable by containerd itself, and the host facts the shim depends on
(cgroup version, wasmtime version). Each check is a function returning a Check, so a check
that cannot run (no containerd binary here) says so instead of failing the rest.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
import shutil
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


@dataclass(frozen=True, slots=True)
class Node:
    flavor: Flavor
    root: Path
    config: str
    handler: str


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


CHECKS = (check_binary, check_config, check_containerd_loads, check_cgroups, check_wasmtime)


def diagnose(node: Node) -> list[Check]:
    return [check(node) for check in CHECKS]


def _executable(root: Path, path: str) -> bool:
    """Is the node's `path` executable, following symlinks as the node would (inside root)?"""
    for _ in range(16):
        p = files.host(root, path)
        if not p.is_symlink():
            return os.access(p, os.X_OK) and p.is_file()
        target = os.readlink(p)
        path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
    return False


def _default_version(node: Node) -> int:
    return 2 if node.flavor.template else 1


def _read(node: Node) -> cfg.TOMLDocument:
    path = files.host(node.root, node.config)
    return cfg.parse(path.read_text(), node.config, template=node.flavor.template)
