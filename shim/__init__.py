"""containerd-shim-wasmtime-v1: a containerd runtime v2 shim that runs WebAssembly in wasmtime."""

from __future__ import annotations

__version__ = "0.1.0"
RUNTIME_NAME = "io.containerd.wasmtime.v1"
