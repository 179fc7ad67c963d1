"""Building the suite's Go clients from the Go module proxy, once, into ``<repo>/.cache/go``.

The suite builds real clients and servers it does not get from Debian: nerdctl
(tests/nerdctl.py) and containerd 1.7 and 2.x with their ``ctr`` and runc shim
(tests/versions.py). All of them are built the same way, which this module holds:

- ``go mod download -json module@version`` fetches the module's own source, with its own
  go.mod and go.sum, from the proxy. ``go install module@version`` would be shorter, but it
  also asks the proxy for the module's version list (for a deprecation notice), which a proxy
  serving only pinned versions refuses, and it refuses a go.mod with ``exclude`` directives
  (containerd 1.7's).
- ``go build -C <that source> -o <dir>/ ./cmd/a ./cmd/b`` then downloads exactly the modules
  the go.sum pins and builds the commands into a temporary directory, which is renamed into
  place only when every command was built: a run killed half-way (or two runs at once) never
  leaves a partial set that later runs would trust.

Everything Go writes (module cache, build cache, binaries) lives under ``GO_DIR``, with
``GOTOOLCHAIN=local`` (never download another Go) and no cgo, so a second run finds the
binaries there and builds nothing. The Go itself is the one tests/golang.py finds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import golang

GO_DIR = Path(__file__).resolve().parents[1] / ".cache" / "go"
# A cold containerd build (downloads and ~1000 packages) took about 2 minutes on the 2-core
# test machine; leave room for a slow proxy but never hang a CI run.
BUILD_TIMEOUT = 1200.0


class GoBuildError(RuntimeError):
    """``go`` is missing, or failed to fetch or build; the message carries go's output."""


def go_env() -> dict[str, str]:
    """A Go environment whose every cache is under ``GO_DIR`` (see the module docstring)."""
    env = dict(os.environ)
    env.update(
        GOPATH=str(GO_DIR / "path"),
        GOBIN=str(GO_DIR / "bin"),
        GOCACHE=str(GO_DIR / "build"),
        GOMODCACHE=str(GO_DIR / "mod"),
        CGO_ENABLED="0",
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=readonly -buildvcs=false",
    )
    return env


def run_go(args: Sequence[str], *, cwd: Path, timeout: float = BUILD_TIMEOUT) -> str:
    """Run the suite's ``go`` with ``go_env()``; its stdout, or GoBuildError with its output."""
    go = golang.go_binary()
    if go is None:
        raise GoBuildError(golang.problem() or "go is missing")
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [str(go), *args],
            cwd=cwd,
            env=go_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GoBuildError(f"go {' '.join(args)} did not finish within {timeout}s") from exc
    if done.returncode != 0:
        raise GoBuildError(
            f"go {' '.join(args)} failed with exit {done.returncode}\n"
            f"stdout: {done.stdout[-4000:]}\nstderr: {done.stderr[-4000:]}"
        )
    return done.stdout


def module_source(module: str, version: str) -> Path:
    """The module's source directory in the module cache, downloaded if it is not there."""
    info = json.loads(run_go(["mod", "download", "-json", f"{module}@{version}"], cwd=GO_DIR))
    if "Dir" not in info:
        raise GoBuildError(f"go mod download {module}@{version}: {info.get('Error', info)}")
    return Path(info["Dir"])


def build_commands(
    module: str,
    version: str,
    packages: Sequence[str],
    target: Path,
    *,
    ldflags: str = "",
    timeout: float = BUILD_TIMEOUT,
) -> Path:
    """Build ``packages`` (``./cmd/x`` paths of ``module@version``) into the directory
    ``target``, unless it exists already; return ``target``.

    ``target`` appears whole or not at all (see the module docstring).
    """
    if target.is_dir():
        return target
    source = module_source(module, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        args = ["build", "-trimpath", "-ldflags", ldflags, "-o", f"{staging}/", *packages]
        run_go(args, cwd=source, timeout=timeout)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # else another run built it meanwhile: theirs is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True, slots=True)
class GoCommand:
    """One client the suite builds (``./cmd/<name>`` of ``module@version``) into
    ``.cache/go/bin/<name>-<version>/<name>``: the version is in the path, so an upgrade
    rebuilds. ``version_var`` is the package variable its release builds stamp."""

    module: str
    version: str
    name: str
    version_var: str = "pkg/version.Version"

    @property
    def path(self) -> Path:
        return GO_DIR / "bin" / f"{self.name}-{self.version}" / self.name

    def problem(self) -> str | None:
        """Why it cannot be had here (for ``require``), or None."""
        return None if self.path.exists() else golang.problem()

    def build(self) -> Path:
        """The binary, built first if it is not cached yet (GoBuildError if go fails)."""
        stamp = f"-X {self.module}/{self.version_var}={self.version}"
        build_commands(
            self.module, self.version, [f"./cmd/{self.name}"], self.path.parent, ldflags=stamp
        )
        return self.path
