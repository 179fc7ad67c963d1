"""Exec processes: more programs run in a running container, each with its own state.

An exec process is what `ctr task exec`, `crictl exec` and `kubectl exec` start. In a wasm
container the exec spec's args[0] is resolved in the container's rootfs exactly as the
entrypoint is, and the program runs in a new process that joins the init's cgroup,
namespaces, root and confinement (shim/proc/child.py, `ProcessSetup.join_pid`), with its own
stdio, args, env and cwd. In a native one runc runs the exec's process spec as it is
(shim/task/native.py).

Each has the state table of a task (shim/task/states.py: created, running, stopped,
deleted; it cannot be paused on its own), changed only by shim/task/tasks.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from runtimes.base import Entrypoint, RunConfig
from shim.errors import InvalidArgument
from shim.io.stdio import ProcessIO, StdioConfig
from shim.proc.process import Process
from shim.task.states import State

MAX_EXEC_SPEC = 1 << 20  # bytes of an exec's process spec (JSON)


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """The parts of the exec's OCI process spec that the shim uses."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    terminal: bool


def parse_exec_spec(data: bytes) -> ExecSpec:
    """The exec request's `spec` Any value: an OCI `process` object as JSON. Malformed
    input raises InvalidArgument naming what is wrong."""
    if len(data) > MAX_EXEC_SPEC:
        raise InvalidArgument(f"exec: the process spec is larger than {MAX_EXEC_SPEC} bytes")
    try:
        doc: Any = json.loads(data or b"null")
    except ValueError as e:
        raise InvalidArgument(f"exec: the process spec is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("exec: the process spec is not a JSON object")
    args, env = doc.get("args"), doc.get("env") or []
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument("exec: process.args must be a non-empty list of strings")
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise InvalidArgument("exec: process.env must be a list of strings")
    cwd = doc.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidArgument(f"exec: process.cwd must be an absolute path, not {cwd!r}")
    terminal = doc.get("terminal", False)
    if not isinstance(terminal, bool):
        raise InvalidArgument(f"exec: process.terminal must be true or false, not {terminal!r}")
    return ExecSpec(tuple(args), tuple(env), cwd, terminal)


@dataclass(eq=False)
class ExecProcess:
    """One exec process of a container."""

    id: str
    container_id: str
    spec: ExecSpec
    stdio: StdioConfig
    io: ProcessIO
    run_config: RunConfig | None  # a wasm program's (None in a native container)
    entry: Entrypoint | None
    process_json: bytes = b""  # the exec's OCI process spec, for runc
    state: State = State.CREATED
    process: Process | None = None
    pid: int = 0
    exit_status: int = 0
    exited_at_ns: int = 0
    kill_signal: int | None = None  # a Kill reached the process before it was ready
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    spawned: asyncio.Event = field(default_factory=asyncio.Event)  # Start has a process, or failed

    def set_exited(self, status: int) -> None:
        """Record how it ended and wake its Waits (the state is tasks.py's to set)."""
        self.exit_status = status
        self.exited_at_ns = time.time_ns()
        self.exited.set()
