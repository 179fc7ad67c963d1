"""The wasmtime Engine every process of the node shares, and turning sources into code.

One Engine per process tree. The warm runtime creates it (`shared_engine()`, from
`Runtime.warm()`) before it forks anything, and every compile job and container process
inherits it. Creating an Engine installs wasmtime's SIGSEGV/SIGILL/SIGFPE/SIGBUS handlers,
once per process (a Rust `Once`), and starts no thread; compiling starts a thread pool. So the
warm runtime never compiles (it must stay single-threaded to fork), the children keep those
four handlers (shim/proc/child.py resets every other signal), and compiling happens in the
compile jobs and container processes, which never fork. Sharing the Engine also shares its
pages: a container process that maps a cached module allocates almost nothing of its own.

The cache key is sha256(kind, wasmtime version, engine settings, source bytes): compiled code
is only valid for the same wasmtime build and settings.

An HTTP server container (runtimes/wasmtime/http/) uses a second Engine, with epoch
interruption (`interruptible_engine()`), created in that container process; its code is
compiled for it and cached under its own keys.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from dataclasses import dataclass

import wasmtime
import wasmtime.component

from runtimes.base import EntrypointKind
from shim.errors import FailedPrecondition

# Settings that change the compiled code; part of the cache key.
ENGINE_SETTINGS = "cranelift_opt_level=speed"
# An HTTP server container's engine adds epoch interruption: a check of the engine's epoch at
# every function entry and loop back-edge, which the server advances to interrupt a request
# past its timeout (runtimes/wasmtime/http/handler.py). It costs a tight loop up to half its
# speed, so only those containers' code carries it (its own cache entries).
INTERRUPTIBLE_SETTINGS = ENGINE_SETTINGS + ",epoch_interruption"

Code = wasmtime.Module | wasmtime.component.Component


@functools.cache
def wasmtime_version() -> str:
    """The installed wasmtime-py's version (compiled artifacts are only valid for it)."""
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # a vendored copy: key on its location
        return "unknown:" + os.path.dirname(wasmtime.__file__)


@functools.cache
def shared_engine() -> wasmtime.Engine:
    """This process tree's Engine: created once, by the first caller (see the docstring)."""
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed"
    config.wasm_component_model = True
    return wasmtime.Engine(config)


@functools.cache
def interruptible_engine() -> wasmtime.Engine:
    """The Engine of an HTTP server container (INTERRUPTIBLE_SETTINGS), created in that
    container process on first use: after shared_engine() installed the signal handlers, and
    like it starting no thread."""
    shared_engine()
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed"
    config.wasm_component_model = True
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def engine(interruptible: bool) -> wasmtime.Engine:
    return interruptible_engine() if interruptible else shared_engine()


@dataclass(frozen=True, slots=True)
class Source:
    """A program's bytes and what they are (after any WAT -> binary translation)."""

    wasm: bytes
    component: bool
    key: str  # sha256 hex of the cache key material
    interruptible: bool = False  # for interruptible_engine()


def load_source(raw: bytes, kind: EntrypointKind, name: str, interruptible: bool = False) -> Source:
    """Turn the entrypoint's bytes into binary wasm, translating WAT text.

    Raises FailedPrecondition with wasmtime's reason for invalid text.
    """
    if kind is EntrypointKind.WAT:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FailedPrecondition(f"{name}: WAT text is not valid UTF-8: {e}") from e
        try:
            wasm = bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as e:
            raise FailedPrecondition(f"{name}: invalid WAT: {e}") from e
    else:
        wasm = raw
    component = len(wasm) >= 8 and int.from_bytes(wasm[6:8], "little") == 1
    material = hashlib.sha256()
    settings = INTERRUPTIBLE_SETTINGS if interruptible else ENGINE_SETTINGS
    for part in ("component" if component else "module", wasmtime_version(), settings):
        material.update(part.encode() + b"\0")
    material.update(hashlib.sha256(wasm).digest())
    return Source(
        wasm=wasm, component=component, key=material.hexdigest(), interruptible=interruptible
    )


def compile_source(src: Source, name: str) -> Code:
    """Compile with the shared Engine (the interruptible one for an interruptible source).
    Raises FailedPrecondition for invalid wasm."""
    what = "component" if src.component else "module"
    target = engine(src.interruptible)
    try:
        if src.component:
            return wasmtime.component.Component(target, src.wasm)
        return wasmtime.Module(target, src.wasm)
    except wasmtime.WasmtimeError as e:
        raise FailedPrecondition(f"{name} is not a valid wasm {what}: {one_line(e)}") from e


def deserialize(path: str, component: bool, interruptible: bool = False) -> Code:
    """Map a cache entry (wasmtime checks it was made by this build and these settings)."""
    if component:
        return wasmtime.component.Component.deserialize_file(engine(interruptible), path)
    return wasmtime.Module.deserialize_file(engine(interruptible), path)


def one_line(e: BaseException) -> str:
    """wasmtime's multi-line "context\\n\\nCaused by:\\n    reason" as one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return ": ".join(ln for ln in lines if ln != "Caused by:")
