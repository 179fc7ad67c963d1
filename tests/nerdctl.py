"""nerdctl for the end-to-end tests: built once from the Go module proxy, pointed at a private
containerd with every piece of its own state in a private directory.

Why nerdctl: it is the docker-like client containerd users actually type, and it exercises
paths ``ctr`` never does: ``nerdctl load`` of our image archives, OCI hooks in the spec, and
above all ``binary://`` log URIs (a detached ``nerdctl run -d`` asks the *shim* to start
nerdctl itself as the logging process, which is what ``nerdctl logs`` then reads).

Version: v1.7.7 is the last 1.x release, and 1.x is the line that still supports containerd
1.6 (the 2.x line wants containerd 1.7 or later); Debian ships containerd 1.6.20.

How it is built: with the Go that tests/golang.py finds (>= 1.21, what nerdctl's go.mod says;
``GOTOOLCHAIN=local`` never lets it fetch another). ``go install module@version`` is the
obvious command but it also asks the proxy for the module's version list (to print a
deprecation notice), and a proxy that only serves pinned versions refuses that list, which
fails the whole install. So the helper does
the same in two steps that fetch nothing but modules: ``go mod download -json
module@version`` (the module's own source with its own go.mod/go.sum, from the proxy) and
``go build -C <that dir> ./cmd/nerdctl``, which downloads exactly the modules nerdctl's go.sum
pins. Everything Go writes (module cache, build cache, the binary) lives under
``<repo>/.cache/go``, so the second run finds ``nerdctl-v1.7.7`` there and builds nothing.
A cold build (empty caches, downloads included) took 60-80 s on the 2-core test machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import golang
from tests.containerd import REPO, SYSTEM_PATH

NERDCTL_MODULE = "github.com/containerd/nerdctl"
NERDCTL_VERSION = "v1.7.7"
GO_DIR = REPO / ".cache" / "go"
# A cold build (downloads + compile of ~300 packages) on 2 cores takes ~1.5 min; leave room
# for a slow proxy but never hang a CI run.
BUILD_TIMEOUT = 900.0


class NerdctlBuildError(RuntimeError):
    """``go`` failed to fetch or build nerdctl; the message carries go's output."""


def nerdctl_path() -> Path:
    """Where the built binary lives; the version is in the name so an upgrade rebuilds."""
    return GO_DIR / "bin" / f"nerdctl-{NERDCTL_VERSION}"


def build_problem() -> str | None:
    """Why nerdctl cannot be had here (for ``require``), or None."""
    if nerdctl_path().exists():
        return None
    return golang.problem()


def _go_env() -> dict[str, str]:
    """A Go environment whose every cache is under ``GO_DIR`` and that uses no cgo and no
    other toolchain than the installed one (GOTOOLCHAIN=local: never download a Go)."""
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


def _go(go: Path, args: Sequence[str], *, cwd: Path, timeout: float) -> str:
    try:
        done = subprocess.run(
            [str(go), *args],
            cwd=cwd,
            env=_go_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NerdctlBuildError(f"go {' '.join(args)} did not finish within {timeout}s") from exc
    if done.returncode != 0:
        raise NerdctlBuildError(
            f"go {' '.join(args)} failed with exit {done.returncode}\n"
            f"stdout: {done.stdout[-4000:]}\nstderr: {done.stderr[-4000:]}"
        )
    return done.stdout


def build_nerdctl(timeout: float = BUILD_TIMEOUT) -> Path:
    """Return the nerdctl binary, building it first if it is not cached yet.

    The binary is written under a temporary name and renamed into place, so a run killed
    half-way (or two runs at once) never leaves a truncated ``nerdctl`` that later runs
    would trust. Raises NerdctlBuildError if go is missing or fails.
    """
    target = nerdctl_path()
    if target.exists():
        return target
    go = golang.go_binary()
    if go is None:
        raise NerdctlBuildError(golang.problem() or "go is missing")
    target.parent.mkdir(parents=True, exist_ok=True)
    info = json.loads(
        _go(
            go,
            ["mod", "download", "-json", f"{NERDCTL_MODULE}@{NERDCTL_VERSION}"],
            cwd=GO_DIR,
            timeout=timeout,
        )
    )
    source = Path(info["Dir"])
    fd, tmp = tempfile.mkstemp(prefix=".nerdctl-", dir=target.parent)
    os.close(fd)
    try:
        stamp = f"-X {NERDCTL_MODULE}/pkg/version.Version={NERDCTL_VERSION}"
        _go(
            go,
            ["build", "-trimpath", "-ldflags", stamp, "-o", tmp, "./cmd/nerdctl"],
            cwd=source,
            timeout=timeout,
        )
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@dataclass(frozen=True, slots=True)
class Nerdctl:
    """``nerdctl`` bound to one containerd socket, namespace and private data root.

    ``data_root`` holds everything nerdctl keeps itself (container names, log configs and
    json logs, /etc/hosts copies); ``cni_path``/``cni_conf`` are private empty dirs so even a
    run that asked for a network could only fail, never touch the machine's CNI setup. The
    environment is reduced to PATH (system dirs only: nerdctl finds no stray plugin or
    config) and NERDCTL_TOML, pointing at a file that does not exist, so the machine's
    /etc/nerdctl/nerdctl.toml is never read.
    """

    binary: Path
    address: Path
    namespace: str
    data_root: Path

    @property
    def cni_path(self) -> Path:
        return self.data_root / "cni-bin"

    @property
    def cni_conf(self) -> Path:
        return self.data_root / "cni-conf"

    def argv(self, *args: str) -> list[str]:
        """The full command line: global flags first, then ``args``."""
        return [
            str(self.binary),
            "--address",
            str(self.address),
            "--namespace",
            self.namespace,
            "--data-root",
            str(self.data_root),
            "--cni-path",
            str(self.cni_path),
            "--cni-netconfpath",
            str(self.cni_conf),
            "--hosts-dir",
            str(self.data_root / "hosts"),
            *args,
        ]

    def env(self) -> dict[str, str]:
        return {
            "PATH": SYSTEM_PATH,
            "NERDCTL_TOML": str(self.data_root / "nerdctl.toml"),
            "HOME": str(self.data_root / "home"),
        }

    def run(
        self,
        *args: str,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run nerdctl; never raises on a non-zero exit (the caller asserts on it)."""
        for d in (self.data_root, self.cni_path, self.cni_conf):
            d.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            self.argv(*args),
            env=self.env(),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
