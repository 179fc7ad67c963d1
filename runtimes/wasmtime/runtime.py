"""`WasmtimeRuntime`: the `runtimes.base.Runtime` the shim uses, delegating by concern.

`resolve()` runs in the daemon and needs only the standard library; everything that imports
wasmtime is imported lazily, so the daemon never loads the wasmtime shared library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtimes.base import Entrypoint, Prepared, RunConfig
from runtimes.wasmtime import entry as _entry

if TYPE_CHECKING:
    from runtimes.wasmtime import run as _run


class WasmtimeRuntime:
    """WASI preview 1 modules, WAT text and WASI preview 2 components, in wasmtime."""

    name = "wasmtime"

    def resolve(self, cfg: RunConfig, path_env: str | None) -> Entrypoint:
        return _entry.resolve(cfg, path_env)

    def warm(self) -> None:
        """Load wasmtime's shared library and Python modules, and nothing more: no Engine
        (it would install signal handlers that the zygote's children reset; see engine.py)
        and no compilation (it starts threads)."""
        from runtimes.wasmtime import engine, run  # noqa: F401  (wasmtime + its component API)

        engine.wasmtime_version()  # reads package metadata once, for every child's cache key

    def prepare(self, cfg: RunConfig, entry: Entrypoint) -> _run.Prepared:
        from runtimes.wasmtime import run

        return run.prepare(cfg, entry)

    def limit_memory(self, prepared: Prepared, max_bytes: int) -> None:
        from runtimes.wasmtime import run

        if not isinstance(prepared, run.PreparedModule | run.PreparedComponent):
            raise TypeError(f"not prepared by WasmtimeRuntime: {type(prepared).__name__}")
        prepared.store.set_limits(memory_size=max(0, max_bytes))

    def run(self, prepared: Prepared) -> int:
        from runtimes.wasmtime import run

        if not isinstance(prepared, run.PreparedModule | run.PreparedComponent):
            raise TypeError(f"not prepared by WasmtimeRuntime: {type(prepared).__name__}")
        return run.run(prepared)
