"""The wasmtime engine glue: entrypoint resolution (entry.py), the Engine and sources
(engine.py), the compile cache (cache.py), the WASI context (wasi.py), fd_renumber's adapter
(renumber.py), linking, running and exit statuses (run.py), behind `WasmtimeRuntime`
(runtime.py).

Importing this package does not import wasmtime; `warm()`, `compile()`, `find()`, `load()`,
`prepare()` and `run()` do, on first use.
"""

from __future__ import annotations

from runtimes.wasmtime.runtime import WasmtimeRuntime

__all__ = ["WasmtimeRuntime"]
