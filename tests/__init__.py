"""The test suite; ``tests.containerd`` and ``tests.wasm.build`` are importable helpers."""

from __future__ import annotations
