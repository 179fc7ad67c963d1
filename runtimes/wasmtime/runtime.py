"""`WasmtimeRuntime`: the `runtimes.base.Runtime` the shim uses, delegating by concern.

`resolve()` and `open_source()` run in the pod daemon and need only the standard library;
everything that touches wasmtime is imported on first use, so a process that never runs or
compiles a program (a `start` or `delete` command) never loads wasmtime's library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtimes.base import CacheSettings, Compiled, Entrypoint, EntrypointKind, Instance, RunConfig
from runtimes.wasmtime import entry as _entry

if TYPE_CHECKING:
    from runtimes.wasmtime import run as _run
    from runtimes.wasmtime.http.server import HttpServer


class WasmtimeRuntime:
    """WASI preview 1 modules, WAT text and WASI preview 2 components, in wasmtime."""

    name = "wasmtime"

    def resolve(self, cfg: RunConfig, path_env: str | None) -> Entrypoint:
        return _entry.resolve(cfg, path_env)

    def open_source(self, cfg: RunConfig, entry: Entrypoint) -> int:
        return _entry.open_source(cfg, entry)

    def warm(self) -> None:
        """Load wasmtime's library and Python modules and create the shared Engine: no
        compilation (it starts threads; see engine.py)."""
        from runtimes.wasmtime import engine, run  # noqa: F401  (wasmtime + its component API)

        engine.wasmtime_version()  # reads package metadata once, for every child's cache key
        engine.shared_engine()

    def compile(
        self, source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
    ) -> Compiled:
        from runtimes.wasmtime import run

        return run.compile_to_cache(source_fd, kind, name, cache)

    def find(
        self, source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
    ) -> Compiled:
        from runtimes.wasmtime import run

        return run.find_in_cache(source_fd, kind, name, cache)

    def load(self, cfg: RunConfig, entry: Entrypoint, compiled: Compiled | None) -> _run.Loaded:
        """Also imports what serving HTTP needs, if the container serves it: load() runs on
        the host's filesystem, prepare() and run() inside the container's root, where the
        shim's modules cannot be found. (The warm runtime does not import it: containers
        that do not serve HTTP pay nothing for it.)"""
        from runtimes.wasmtime import run

        if cfg.http is not None:
            from runtimes.wasmtime.http import server  # noqa: F401

        return run.load(cfg, entry, compiled)

    def prepare(
        self, cfg: RunConfig, entry: Entrypoint, loaded: object
    ) -> _run.Instance | HttpServer:
        """The instance to run, or, for a container that serves HTTP (`cfg.http`), the
        server with its socket bound (runtimes/wasmtime/http/server.py)."""
        from runtimes.wasmtime import run

        if not isinstance(loaded, run.Loaded):
            raise TypeError(f"not loaded by WasmtimeRuntime: {type(loaded).__name__}")
        if cfg.http is not None:
            from runtimes.wasmtime.http.server import HttpServer

            return HttpServer(cfg, entry, loaded)
        return run.prepare(cfg, entry, loaded)

    def memory_floor(self, loaded: object) -> int:
        from runtimes.wasmtime import run

        if not isinstance(loaded, run.Loaded):
            raise TypeError(f"not loaded by WasmtimeRuntime: {type(loaded).__name__}")
        return run.memory_floor(loaded)

    def limit_memory(self, prepared: Instance, max_bytes: int) -> None:
        from runtimes.wasmtime import run

        if isinstance(prepared, run.ModuleInstance | run.ComponentInstance):
            prepared.store.set_limits(memory_size=max(0, max_bytes))
            return
        server = _server(prepared)
        server.limit_memory(max(0, max_bytes), run.memory_floor(server.handler.loaded))

    def run(self, prepared: Instance) -> int:
        from runtimes.wasmtime import run

        if isinstance(prepared, run.ModuleInstance | run.ComponentInstance):
            return run.run(prepared)
        return _server(prepared).serve()


def _server(prepared: object) -> HttpServer:
    """`prepared` as the HTTP server prepare() made. The module is imported only here, for
    what is not an instance: it was imported by load() on the host's side, while a plain
    container runs inside its root, where no module of the shim can be imported."""
    from runtimes.wasmtime.http.server import HttpServer

    if not isinstance(prepared, HttpServer):
        raise TypeError(f"not prepared by WasmtimeRuntime: {type(prepared).__name__}")
    return prepared
