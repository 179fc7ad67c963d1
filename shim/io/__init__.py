"""Stdio for container processes: FIFOs, ``file://`` and ``binary://`` log URIs, null IO.

``stdio.py`` is the entry point; ``uri.py`` decides what the strings mean, ``stdin.py`` and
``logger.py`` own the stdin copier and the logging binary, ``fds.py`` the descriptor helpers
they share.
"""

from __future__ import annotations

from shim.io.stdio import DEFAULT_READY_TIMEOUT, ProcessIO, StdioConfig

__all__ = ["DEFAULT_READY_TIMEOUT", "ProcessIO", "StdioConfig"]
