"""crictl for the end-to-end tests: built once from the Go module proxy, pointed at the CRI
test bed's private containerd (tests/cri.py).

Why crictl: it is the client kubelet's people use to drive a CRI runtime by hand, and its
``exec`` goes both ways kubelet's does: ``-s`` (sync) is the ExecSync RPC, whose output comes
back in the reply, and the default streams through containerd's stream server (an HTTP
upgrade on the address ``Exec`` returns), which starts the exec process with stdio FIFOs.

Version: v1.37.0 (the newest release the module proxy serves here); crictl speaks CRI v1,
which containerd 1.6 serves. Its go.mod wants Go 1.26.6 or newer (``build_problem`` says so
when the Go found is older).

How it is built: by tests/gobuild.py, as nerdctl and containerd are (the same
``<repo>/.cache/go`` caches, ``GOTOOLCHAIN=local``), into ``crictl-v1.37.0/``; the second run
finds the binary and builds nothing.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests import golang
from tests.containerd import SYSTEM_PATH
from tests.gobuild import GO_DIR, build_commands

CRICTL_MODULE = "sigs.k8s.io/cri-tools"
CRICTL_VERSION = "v1.37.0"


def crictl_path() -> Path:
    """Where the built binary lives; the version is in the name so an upgrade rebuilds."""
    return GO_DIR / "bin" / f"crictl-{CRICTL_VERSION}" / "crictl"


def build_problem() -> str | None:
    """Why crictl cannot be had here (for ``require``), or None."""
    if crictl_path().exists():
        return None
    return golang.problem()


def build_crictl() -> Path:
    """Return the crictl binary, building it first if it is not cached yet (GoBuildError if
    go fails)."""
    stamp = f"-X {CRICTL_MODULE}/pkg/version.Version={CRICTL_VERSION}"
    target = crictl_path().parent
    build_commands(CRICTL_MODULE, CRICTL_VERSION, ["./cmd/crictl"], target, ldflags=stamp)
    return crictl_path()


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
