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

from tests.containerd import SYSTEM_PATH
from tests.gobuild import GoCommand

CRICTL = GoCommand("sigs.k8s.io/cri-tools", "v1.37.0", "crictl")


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
