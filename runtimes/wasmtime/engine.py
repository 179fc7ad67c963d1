"""The wasmtime Engine and compilation, with an optional on-disk cache of compiled code.

Where these run matters. Creating an Engine installs wasmtime's SIGSEGV/SIGILL/SIGFPE/SIGBUS
handlers, once per process (a Rust `Once`), and compiling starts a thread pool. The zygote's
children reset every signal handler to SIG_DFL after fork, so an Engine created in the zygote
would leave its children with no trap handlers and the `Once` already spent: the first
out-of-bounds access would kill the container with SIGSEGV instead of trapping. Hence the
zygote only imports wasmtime (`warm()`), and the Engine is created in each child, which also
keeps the zygote single-threaded. Compiling in the child may use all the CPUs it is allowed
(`parallel_compilation` stays on): the child never forks, so its threads are harmless.

The cache maps sha256(kind, wasmtime version, engine settings, source bytes) to the serialized
artifact. Entries are written to a temporary file and renamed into place, so a reader sees a
whole artifact or none; a corrupt or incompatible entry is ignored and replaced. Loading an
artifact maps native code into the process, so the cache directory must be writable only by
the shim (it is under the shim's own state directory).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass

import wasmtime
import wasmtime.component

from runtimes.base import EntrypointKind
from shim.errors import FailedPrecondition

# Settings that change the compiled code; part of the cache key.
ENGINE_SETTINGS = "cranelift_opt_level=speed"

Compiled = wasmtime.Module | wasmtime.component.Component


@functools.cache
def wasmtime_version() -> str:
    """The installed wasmtime-py's version (compiled artifacts are only valid for it)."""
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # a vendored copy: key on its location
        return "unknown:" + os.path.dirname(wasmtime.__file__)


def new_engine() -> wasmtime.Engine:
    """An Engine for one container process. Call only in the process that runs the guest."""
    config = wasmtime.Config()
    config.cranelift_opt_level = "speed"
    config.wasm_component_model = True
    return wasmtime.Engine(config)


@dataclass(frozen=True, slots=True)
class Source:
    """A program's bytes and what they are (after any WAT -> binary translation)."""

    wasm: bytes
    component: bool
    key: str  # sha256 hex of the cache key material


def load_source(raw: bytes, kind: EntrypointKind, name: str) -> Source:
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
    for part in ("component" if component else "module", wasmtime_version(), ENGINE_SETTINGS):
        material.update(part.encode() + b"\0")
    material.update(hashlib.sha256(wasm).digest())
    return Source(wasm=wasm, component=component, key=material.hexdigest())


def _compile(engine: wasmtime.Engine, src: Source, name: str) -> Compiled:
    what = "component" if src.component else "module"
    try:
        if src.component:
            return wasmtime.component.Component(engine, src.wasm)
        return wasmtime.Module(engine, src.wasm)
    except wasmtime.WasmtimeError as e:
        raise FailedPrecondition(f"{name} is not a valid wasm {what}: {one_line(e)}") from e


def one_line(e: BaseException) -> str:
    """wasmtime's multi-line "context\\n\\nCaused by:\\n    reason" as one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return ": ".join(ln for ln in lines if ln != "Caused by:")


def _load_cached(engine: wasmtime.Engine, path: str, component: bool) -> Compiled | None:
    if not os.path.isfile(path):
        return None
    try:
        if component:
            return wasmtime.component.Component.deserialize_file(engine, path)
        return wasmtime.Module.deserialize_file(engine, path)
    except wasmtime.WasmtimeError:
        # written by another wasmtime build or damaged: drop it, it will be rewritten
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None


def _store(path: str, artifact: bytes | bytearray) -> None:
    """Write atomically: a temporary file in the same directory, then rename over `path`."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".cwasm")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(artifact)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cache_path(cache_dir: str, src: Source) -> str:
    return os.path.join(cache_dir, src.key[:2], src.key + ".cwasm")


def compile_source(
    engine: wasmtime.Engine, src: Source, name: str, cache_dir: str | None
) -> Compiled:
    """Compile `src`, through the cache when `cache_dir` is set.

    The cache is best-effort: a process that cannot read or write it (e.g. after dropping to
    the spec's uid) just compiles. Raises FailedPrecondition for invalid wasm.
    """
    if cache_dir is None:
        return _compile(engine, src, name)
    path = cache_path(cache_dir, src)
    try:
        cached = _load_cached(engine, path, src.component)
    except OSError:
        cached = None
    if cached is not None:
        return cached
    compiled = _compile(engine, src, name)
    with contextlib.suppress(OSError, wasmtime.WasmtimeError):
        _store(path, compiled.serialize())
    return compiled
