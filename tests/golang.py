"""Where the test suite's Go toolchain is, and whether it is new enough: the one place deciding.

Four things in the suite are built with Go, each with the installed toolchain only
(``GOTOOLCHAIN=local``: no newer Go is ever downloaded): containerd 1.7.35 and 2.4.2 with
their ctr and runc shim (tests/versions.py; their go.mod files say ``go 1.25.0`` and ``go
1.26.6``), crictl v1.37.0 (tests/crictl.py, ``go 1.26.6``), nerdctl v1.7.7 (tests/nerdctl.py,
``go 1.21``) and the ttrpc interop program (tests/unit/test_ttrpc_interop.py), built in GOPATH
mode from Debian's containerd Go sources. So the suite needs Go 1.26.6 or newer; Debian 12's
``golang`` package is 1.19, too old. ``make deps`` does not install Go: the machines this
project runs on have the official toolchain in /usr/local/go.

Search order: ``$GO`` if it is set (and then nothing else), else ``go`` on ``PATH``, else
``/usr/local/go/bin/go``; the first one new enough wins.

``python -m tests.golang`` is the check ``make test`` runs before pytest: it prints the Go it
found, or what is missing and how to get it, and exits 1 for a missing Go only under CI
(``tests.prereq.in_ci``), where a missing prerequisite is a failure, not a skip.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.prereq import in_ci, require

MIN_VERSION = (1, 26, 6)
OFFICIAL = Path("/usr/local/go/bin/go")
HOW_TO_GET = (
    "install the official toolchain (https://go.dev/dl/) under /usr/local/go, put a go "
    f">= {'.'.join(map(str, MIN_VERSION))} on PATH, or name one with GO=/path/to/go; "
    "Debian 12's golang package (1.19) is too old"
)


@dataclass(frozen=True, slots=True)
class Go:
    """A ``go`` command and the version it reports (``go1.26.8`` -> (1, 26, 8))."""

    path: Path
    version: tuple[int, int, int]


def candidates() -> list[Path]:
    """The ``go`` commands to try, in order (see the module docstring)."""
    explicit = os.environ.get("GO")
    if explicit:
        return [Path(explicit)]
    found = [Path(p) for p in (shutil.which("go"),) if p]
    return [*found, OFFICIAL] if OFFICIAL not in found else found


@functools.cache
def _version(go: Path) -> tuple[int, int, int] | None:
    """``go env GOVERSION`` as (major, minor), or None if it does not say one."""
    try:
        done = subprocess.run(
            [str(go), "env", "GOVERSION"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",  # no go.mod around: the version is go's own
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
    except OSError:
        return None
    match = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", done.stdout.strip())
    if done.returncode != 0 or not match:
        return None
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def find() -> Go | str:
    """The first candidate new enough, or a sentence saying what is missing and how to get it."""
    seen: list[str] = []
    for path in candidates():
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        version = _version(path)
        if version is None:
            seen.append(f"{path} reports no Go version")
        elif version < MIN_VERSION:
            seen.append(f"{path} is go{'.'.join(map(str, version))}")
        else:
            return Go(path, version)
    looked = ", ".join(str(p) for p in candidates())
    found = f" ({'; '.join(seen)})" if seen else ""
    return (
        f"the tests need Go >= {'.'.join(map(str, MIN_VERSION))} to build containerd 1.7 and "
        f"2.x, crictl, nerdctl and the ttrpc interop program; none found at {looked}{found}: "
        f"{HOW_TO_GET}"
    )


def go_binary() -> Path | None:
    """The ``go`` command the suite uses, or None (then ``problem()`` says why)."""
    found = find()
    return found.path if isinstance(found, Go) else None


def problem() -> str | None:
    """Why there is no usable Go, or None."""
    found = find()
    return found if isinstance(found, str) else None


def require_go() -> Path:
    """The ``go`` command for a test; without one, skip the test (fail it under CI) saying why."""
    found = find()
    if isinstance(found, str):
        require(False, found)
        raise AssertionError("unreachable: require() skips or fails")
    return found.path


def main() -> int:
    found = find()
    if isinstance(found, Go):
        print(f"go: {found.path} (go{'.'.join(map(str, found.version))})")
        return 0
    print(f"MISSING PREREQUISITE: {found}", file=sys.stderr)
    if in_ci():
        return 1
    print("(not CI: the tests that need Go will be skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
