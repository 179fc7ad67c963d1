"""A network namespace of the test's own (`ip netns add`), loopback up, removed after.

Servers under test listen in it (a container joins it with `ctr run --with-ns
network:<path>`), and clients reach them with `ip netns exec <name> ...`: nothing leaves
loopback, and nothing on the host's network sees the traffic.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

IP = "/usr/sbin/ip"
_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class NetNs:
    name: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(
        self, *args: str, timeout: float = 60.0, check: bool = False, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`ip netns exec <name> ARGS`, output as text."""
        return subprocess.run(
            [IP, "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=cwd,
        )


@contextlib.contextmanager
def private_netns(prefix: str = "wasmtime-test") -> Iterator[NetNs]:
    """A new network namespace with `lo` up; deleted on exit."""
    ns = NetNs(f"{prefix}-{os.getpid()}-{next(_numbers)}")
    subprocess.run([IP, "netns", "add", ns.name], check=True, capture_output=True)
    try:
        subprocess.run(
            [IP, "-n", ns.name, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        yield ns
    finally:
        subprocess.run([IP, "netns", "del", ns.name], check=False, capture_output=True)
