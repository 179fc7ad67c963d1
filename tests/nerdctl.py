"""nerdctl for the end-to-end tests: built once from the Go module proxy, pointed at a private
containerd with every piece of its own state in a private directory.

Why nerdctl: it is the docker-like client containerd users actually type, and it exercises
paths ``ctr`` never does: ``nerdctl load`` of our image archives, OCI hooks in the spec, and
above all ``binary://`` log URIs (a detached ``nerdctl run -d`` asks the *shim* to start
nerdctl itself as the logging process, which is what ``nerdctl logs`` then reads).

Version: v1.7.7, the last 1.x release, for every containerd the suite runs (tests/versions.py):
1.x is the line that still supports containerd 1.6, which Debian ships, and it drives 1.7 and
2.4 through the same API. (v2.2.1 cannot be built from the proxy alone: its go.mod replaces a
module with ``./mod/tigron``, a directory its module zip does not hold.)

How it is built: by tests/gobuild.py, with the Go that tests/golang.py finds (>= 1.21, what
nerdctl's go.mod says), into ``<repo>/.cache/go/bin/nerdctl-v1.7.7/``, so the second run builds
nothing. A cold build (empty caches, downloads included) took 60-80 s on the 2-core test
machine.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.containerd import SYSTEM_PATH
from tests.gobuild import GoCommand

NERDCTL = GoCommand("github.com/containerd/nerdctl", "v1.7.7", "nerdctl")


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
