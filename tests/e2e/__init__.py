"""End-to-end tests: the real containerd, ctr, runc and FIFOs (see tests/containerd.py)."""

from __future__ import annotations
