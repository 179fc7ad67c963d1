"""What an engine provides to the shim: the `Runtime` protocol and the plain values it takes.

The shim never hands protobuf or OCI structures to an engine. The task layer distils a
container's spec into one frozen `RunConfig`; the engine answers with an `Entrypoint` (cheaply,
in the daemon, at Create) and later, inside the forked container process, turns both into a
`Prepared` program and runs it. Splitting `prepare()` from `run()` is what lets Start fail with
a precise reason (bad module, missing export) instead of a bare exit status: the zygote reports
"ready" only after `prepare()` returned.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from shim.errors import FailedPrecondition


@dataclass(frozen=True, slots=True)
class Preopen:
    """A host directory made visible to the guest at `guest` (a WASI preopen)."""

    host: str
    guest: str
    readonly: bool


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything an engine needs to run one container process: plain values, no protobuf."""

    container_id: str
    rootfs: str  # host path of the container's mounted root
    args: tuple[str, ...]  # process.args; args[0] is the entrypoint as written
    env: tuple[str, ...]  # process.env, "KEY=VALUE"
    cwd: str  # process.cwd, a guest path
    preopens: tuple[Preopen, ...]  # the rootfs at "/" first, then the spec's directory mounts
    memory_limit: int | None = None  # bytes; cap on each wasm linear memory
    cache_dir: str | None = None  # where compiled artifacts may be cached (None = no cache)
    artifact_dir: str | None = None  # outside the rootfs: holds a wasm OCI artifact's layer


class EntrypointKind(enum.Enum):
    """What the entrypoint file turned out to be, judged by its first bytes, not its name."""

    MODULE = "module"  # binary core module (\0asm, version 1)
    COMPONENT = "component"  # binary component (\0asm, component layer)
    WAT = "wat"  # text format, `(module ...)` or `(component ...)`
    ELF = "elf"  # a native executable: refused
    SCRIPT = "script"  # `#!` interpreter script: refused
    OTHER = "other"  # anything else: refused


@dataclass(frozen=True, slots=True)
class Entrypoint:
    """The resolved program of a container, as found by `Runtime.resolve()`."""

    host_path: str  # resolved file on the host (inside rootfs)
    guest_path: str  # as the guest sees it
    func: str | None  # from "module.wasm#func"; None = default (_start / wasi:cli/run)
    kind: EntrypointKind


class NotWasm(FailedPrecondition):
    """The entrypoint exists but is not wasm (an ELF, a script, anything else).

    A distinct class, not a message to match: inside a Kubernetes pod the shim runs such a
    container natively (sidecars, the pause sandbox) instead of refusing it."""

    def __init__(self, message: str, entry: Entrypoint) -> None:
        super().__init__(message)
        self.entry = entry


class Prepared(Protocol):
    """Engine-specific: what `prepare()` built (compiled, linked, instantiated) for `run()`.

    Opaque to the shim; it only ever passes the object from `prepare()` to `run()` in the same
    process.
    """

    @property
    def entry(self) -> Entrypoint: ...


class Runtime(Protocol):
    """An engine. The methods run in three different processes, hence their constraints."""

    name: str

    def resolve(self, cfg: RunConfig, path_env: str | None) -> Entrypoint:
        """In the daemon, at Create: find and classify args[0]. Cheap, stdlib only.

        Raises `shim.errors.NotFound` (no such file, naming it), `FailedPrecondition` (an ELF,
        a `#!` script, or not wasm at all: the message names the file and what it is) or
        `InvalidArgument` (no args, an empty `#func`).
        """
        ...

    def warm(self) -> None:
        """In the zygote, before it forks anything: import what is slow. Starts no threads
        and installs no signal handlers (the children reset every handler to SIG_DFL)."""
        ...

    def prepare(self, cfg: RunConfig, entry: Entrypoint) -> Prepared:
        """In the forked container process: read, compile (+ cache), link, instantiate.

        Raises `FailedPrecondition` with a message for the user (invalid or truncated wasm,
        a missing or unusable `#func`, a memory minimum above the limit, ...).
        """
        ...

    def limit_memory(self, prepared: Prepared, max_bytes: int) -> None:
        """In the forked container process, between prepare() and run(): cap each linear
        memory at `max_bytes` (never below its current size). The shim calls it with what the
        cgroup's memory limit leaves once the engine's own overhead is paid, so that a guest
        that allocates without bound sees memory.grow fail (and traps or exits cleanly)
        instead of being OOM-killed."""
        ...

    def run(self, prepared: Prepared) -> int:
        """In the forked container process: run the guest; return its exit status (0-255)."""
        ...
