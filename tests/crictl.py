"""crictl for the end-to-end tests: built once from the Go module proxy, pointed at the CRI
test bed's private containerd (tests/cri.py).

Why crictl: it is the client kubelet's people use to drive a CRI runtime by hand, and its
``exec`` goes both ways kubelet's does: ``-s`` (sync) is the ExecSync RPC, whose output comes
back in the reply, and the default streams through containerd's stream server (an HTTP
upgrade on the address ``Exec`` returns), which starts the exec process with stdio FIFOs.

Version: v1.37.0 (the newest release the module proxy serves here); crictl speaks CRI v1,
which containerd 1.6 serves. Its go.mod wants Go 1.26.6 or newer (``build_problem`` says so
when the Go found is older).

How it is built: exactly as tests/nerdctl.py builds nerdctl (its ``_go`` helper, the same
``<repo>/.cache/go`` caches, ``GOTOOLCHAIN=local``): ``go mod download -json`` of the module,
then ``go build ./cmd/crictl`` inside it, into ``crictl-v1.37.0`` under a temporary name
renamed into place. The second run finds the binary and builds nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests import golang
from tests.containerd import SYSTEM_PATH
from tests.nerdctl import BUILD_TIMEOUT, GO_DIR, NerdctlBuildError, _go

CRICTL_MODULE = "sigs.k8s.io/cri-tools"
CRICTL_VERSION = "v1.37.0"
CRICTL_GO = (1, 26)  # its go.mod: go 1.26.6


class CrictlBuildError(RuntimeError):
    """``go`` failed to fetch or build crictl; the message carries go's output."""


def crictl_path() -> Path:
    """Where the built binary lives; the version is in the name so an upgrade rebuilds."""
    return GO_DIR / "bin" / f"crictl-{CRICTL_VERSION}"


def build_problem() -> str | None:
    """Why crictl cannot be had here (for ``require``), or None. Its go.mod says ``go
    1.26.6``, newer than the suite's minimum, and ``GOTOOLCHAIN=local`` fetches no newer Go."""
    if crictl_path().exists():
        return None
    found = golang.find()
    if isinstance(found, str):
        return found
    if found.version < CRICTL_GO:
        return (
            f"crictl {CRICTL_VERSION} needs Go >= {CRICTL_GO[0]}.{CRICTL_GO[1]}.6; "
            f"{found.path} is {found.version[0]}.{found.version[1]}: {golang.HOW_TO_GET}"
        )
    return None


def build_crictl(timeout: float = BUILD_TIMEOUT) -> Path:
    """Return the crictl binary, building it first if it is not cached yet. Raises
    CrictlBuildError if go is missing or fails."""
    target = crictl_path()
    if target.exists():
        return target
    go = golang.go_binary()
    if go is None:
        raise CrictlBuildError(golang.problem() or "go is missing")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = json.loads(
            _go(
                go,
                ["mod", "download", "-json", f"{CRICTL_MODULE}@{CRICTL_VERSION}"],
                cwd=GO_DIR,
                timeout=timeout,
            )
        )
        fd, tmp = tempfile.mkstemp(prefix=".crictl-", dir=target.parent)
        os.close(fd)
        try:
            stamp = f"-X {CRICTL_MODULE}/pkg/version.Version={CRICTL_VERSION}"
            _go(
                go,
                ["build", "-trimpath", "-ldflags", stamp, "-o", tmp, "./cmd/crictl"],
                cwd=Path(info["Dir"]),
                timeout=timeout,
            )
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except NerdctlBuildError as e:  # the shared go helper's error, renamed for the reader
        raise CrictlBuildError(str(e).replace("nerdctl", "crictl")) from None
    return target


@dataclass(frozen=True, slots=True)
class Crictl:
    """``crictl`` bound to one CRI socket. Its config file is a private one written here
    (``--config``), so the machine's /etc/crictl.yaml is never read."""

    binary: Path
    endpoint: Path
    home: Path

    def argv(self, *args: str) -> list[str]:
        return [str(self.binary), "--config", str(self.home / "crictl.yaml"), *args]

    def run(
        self, *args: str, timeout: float = 90.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run crictl; never raises on a non-zero exit (the caller asserts on it)."""
        self.home.mkdir(parents=True, exist_ok=True)
        sock = f"unix://{self.endpoint}"
        (self.home / "crictl.yaml").write_text(
            f"runtime-endpoint: {sock}\nimage-endpoint: {sock}\ntimeout: 60\n"
        )
        return subprocess.run(
            self.argv(*args),
            env={"PATH": SYSTEM_PATH, "HOME": str(self.home)},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
