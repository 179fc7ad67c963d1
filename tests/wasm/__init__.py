"""Sources of the wasm test programs and the code that builds them (``build.py``)."""

from __future__ import annotations
