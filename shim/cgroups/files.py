"""The few file operations every cgroup module shares, each failing with a message naming the file.

Kernel cgroup files want one write(2) per value and report absent controllers through errno, so
these helpers exist once rather than as ad-hoc open() calls in each module.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from shim.errors import Internal


def _opt(leaf: str, name: str) -> str | None:
    """A file's text, or None if this kernel / hierarchy does not provide it."""
    try:
        with open(os.path.join(leaf, name), encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP):
            return None
        raise Internal(f"cgroup: reading {os.path.join(leaf, name)}: {e.strerror}") from e


def _write(path: str, value: str) -> None:
    """One write(2) per value, as the kernel expects; failures name the file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise Internal(f"cgroup: writing {value!r} to {path}: {e.strerror}") from e


def _read(path: str, missing: str | None = None) -> str:
    """The file's text; ``missing`` when it does not exist (None: raise Internal)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError as e:
        if missing is not None:
            return missing
        raise Internal(f"cgroup: reading {path}: {e.strerror}") from e
    except OSError as e:
        raise Internal(f"cgroup: reading {path}: {e.strerror}") from e


def _os_call(fn: Callable[..., object], path: str, **kwargs: Any) -> None:
    """Make a directory; failures become Internal naming it, except FileExistsError, which
    passes unchanged: for a container's leaf it means the cgroup is not the shim's to take."""
    try:
        fn(path, **kwargs)
    except FileExistsError:
        raise
    except OSError as e:
        raise Internal(f"cgroup: creating {path}: {e.strerror}") from e


def _flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, memory.events ...) -> dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out
