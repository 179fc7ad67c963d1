"""What an engine provides to the shim: the `Runtime` protocol and the plain values it takes.

The shim never hands protobuf or OCI structures to an engine. The task layer distils a
container's spec into one frozen `RunConfig`; the engine answers with an `Entrypoint` (cheaply,
in the daemon, at Create). A compile job of the warm runtime turns the entrypoint's bytes into
a verified cache entry (`compile()`), and inside the forked container process the engine loads
that entry (`load()`, still as root), builds the `Instance` under the container's identity
(`prepare()`) and runs it. Splitting `prepare()` from `run()` is what lets Start fail with a
precise reason (bad module, missing export) instead of a bare exit status: the spawner reports
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


class HttpMode(enum.Enum):
    """How a container serves HTTP (runtimes/wasmtime/http/switch.py reads the switch)."""

    WAGI = "wagi"  # each request runs the program as a CGI script (runtimes/wasmtime/http/)


@dataclass(frozen=True, slots=True)
class HttpServing:
    """A container that is an HTTP server: the shim's container process listens on `port`
    in the container's network namespace and runs the program once per request."""

    mode: HttpMode
    port: int
    timeout: float  # seconds a request's program may run before it is interrupted (504)
    max_concurrent: int  # programs running at once; more requests wait for a slot


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything an engine needs to run one container process: plain values, no protobuf."""

    container_id: str
    rootfs: str  # host path of the container's mounted root
    args: tuple[str, ...]  # process.args; args[0] is the entrypoint as written
    env: tuple[str, ...]  # process.env, "KEY=VALUE"
    cwd: str  # process.cwd, a guest path
    preopens: tuple[Preopen, ...]  # "/" of a confined process; the standalone tool's rootfs+dirs
    memory_limit: int | None = None  # bytes; cap on each wasm linear memory
    cache: CacheSettings | None = None  # where compiled code is cached (None = no cache)
    artifact_dir: str | None = None  # outside the rootfs: holds a wasm OCI artifact's layer
    http: HttpServing | None = None  # serve HTTP, running the program per request


DEFAULT_CACHE_LIMIT = 2 << 30  # bytes: the cache's bound unless the operator sets one


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The node's cache of compiled code: a directory only root can write, and its bound."""

    dir: str
    limit: int  # bytes; least recently used entries beyond it are evicted


@dataclass(frozen=True, slots=True)
class Compiled:
    """A verified cache entry, ready to be mapped; `note` tells what it took (for the log)."""

    path: str
    note: str = ""


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


class Loaded(Protocol):
    """Engine-specific: compiled code, as `load()` mapped it for `prepare()`. Opaque."""


class Instance(Protocol):
    """Engine-specific: what `prepare()` linked and instantiated for `run()`.

    Opaque to the shim; it only ever passes the object from `prepare()` to `run()` in the same
    process.
    """

    @property
    def entry(self) -> Entrypoint: ...


class Runtime(Protocol):
    """An engine. The methods run in four different processes, hence their constraints."""

    name: str

    def resolve(self, cfg: RunConfig, path_env: str | None) -> Entrypoint:
        """In the daemon, at Create: find and classify args[0]. Cheap, stdlib only.

        Raises `shim.errors.NotFound` (no such file, naming it), `FailedPrecondition` (an ELF,
        a `#!` script, or not wasm at all: the message names the file and what it is) or
        `InvalidArgument` (no args, an empty `#func`).
        """
        ...

    def open_source(self, cfg: RunConfig, entry: Entrypoint) -> int:
        """In the daemon, at Create: a read-only descriptor of the entrypoint's bytes, for a
        compile job. Raises `FailedPrecondition` naming the file."""
        ...

    def warm(self) -> None:
        """In the warm runtime (or a spawner that started cold), before it forks anything:
        import what is slow and create what every container process can share. Starts no
        threads (the process forks afterwards). Idempotent."""
        ...

    def compile(
        self, source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
    ) -> Compiled:
        """In a compile job (or a container process without a warm runtime): the verified
        cache entry for the program read from `source_fd`, compiling it if there is none.

        Raises `FailedPrecondition` naming `name` for a program that does not compile.
        """
        ...

    def find(
        self, source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
    ) -> Compiled:
        """Like `compile()`, but never compiles: path "" when the cache has no valid entry
        (the note says so if it removed a damaged one). The warm runtime calls it itself for
        small programs, so the usual case costs no fork. `source_fd` is closed."""
        ...

    def load(self, cfg: RunConfig, entry: Entrypoint, compiled: Compiled | None) -> Loaded:
        """In the forked container process, as root: map `compiled`, or compile the entrypoint
        here (through `cfg.cache` when set). Raises `FailedPrecondition`."""
        ...

    def prepare(self, cfg: RunConfig, entry: Entrypoint, loaded: Loaded) -> Instance:
        """In the forked container process, as the container's user: WASI context, link,
        instantiate.

        Raises `FailedPrecondition` with a message for the user (a missing or unusable
        `#func`, a memory minimum above the limit, ...).
        """
        ...

    def memory_floor(self, loaded: object) -> int:
        """In the forked container process, after load(): the bytes of linear memory the
        program has from its first instruction (the declared minimum of the memories it
        exports or imports; 0 when the engine cannot tell). The shim refuses to start a
        program whose floor does not fit in what the memory limit leaves, with a message
        that names both, instead of letting the kernel OOM-kill it during setup."""
        ...

    def limit_memory(self, prepared: Instance, max_bytes: int) -> None:
        """In the forked container process, between prepare() and run(): cap each linear
        memory at `max_bytes` (never below its current size). The shim calls it with what the
        cgroup's memory limit leaves once the engine's own overhead is paid, so that a guest
        that allocates without bound sees memory.grow fail (and traps or exits cleanly)
        instead of being OOM-killed."""
        ...

    def run(self, prepared: Instance) -> int:
        """In the forked container process: run the guest; return its exit status (0-255)."""
        ...
