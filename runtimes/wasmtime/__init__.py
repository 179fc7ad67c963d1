"""The wasmtime engine glue: entrypoint resolution (entry.py), Engine and compile cache
(engine.py), the WASI context (wasi.py), linking, running and exit statuses (run.py).

Importing this package does not import wasmtime; only `prepare()`/`run()`/`warm()` do.
"""

from __future__ import annotations

from runtimes.wasmtime.runtime import WasmtimeRuntime

__all__ = ["WasmtimeRuntime"]
