"""`install --restart`: restart containerd and check that it came back with our runtime.

Only systemd is supported (what every flavor we know runs under). From the DaemonSet the
tool runs in a container with hostPID and the host's / at `root`, so commands enter the
host's namespaces through PID 1 with nsenter. Command construction is separate from running
(a `Runner`), so it is tested on machines without systemd.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shim.errors import FailedPrecondition, Unavailable
from wasmtime_shim.node.flavors import Flavor

Runner = Callable[[Sequence[str]], "tuple[int, str]"]
NSENTER = ("nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--")


def run(cmd: Sequence[str]) -> tuple[int, str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=120)
    return out.returncode, (out.stdout + out.stderr).strip()


@dataclass(frozen=True, slots=True)
class Restarter:
    flavor: Flavor
    root: Path
    shim_path: str  # host path of the installed binary
    runner: Runner = run
    sleep: Callable[[float], None] = time.sleep
    timeout: float = 60.0
    poll: float = 1.0

    def command(self, *args: str) -> list[str]:
        """`args` as run on the host: directly, or through nsenter when root is not /."""
        prefix = NSENTER if self.root != Path("/") else ()
        return [*prefix, *args]

    def unit(self) -> str:
        """The flavor's first active unit (k3s vs k3s-agent...), else its first."""
        for unit in self.flavor.units:
            if self.runner(self.command("systemctl", "is-active", "--quiet", unit))[0] == 0:
                return unit
        return self.flavor.units[0]

    def restart(self) -> list[str]:
        """Restart, wait until active and answering, check the shim runs. Returns what it saw."""
        if not (self.root / "run/systemd/system").is_dir():
            raise FailedPrecondition(
                f"no systemd on this node: restart {self.flavor.units[0]} yourself, "
                f"then run `wasmtime-shim doctor`"
            )
        unit = self.unit()
        code, out = self.runner(self.command("systemctl", "restart", unit))
        if code != 0:
            raise Unavailable(f"systemctl restart {unit} failed ({code}): {out}")
        done = [f"restarted {unit}"]
        self._wait(("systemctl", "is-active", "--quiet", unit), f"{unit} did not become active")
        ctr = ("ctr", "--address", self.flavor.socket, "version")
        self._wait(ctr, f"containerd did not answer on {self.flavor.socket}")
        done.append(f"containerd answers on {self.flavor.socket}")
        code, out = self.runner(self.command(self.shim_path, "-v"))
        if code != 0:
            raise Unavailable(f"{self.shim_path} -v failed ({code}): {out}")
        done.append(f"{self.shim_path} runs: {out.splitlines()[-1].strip() if out else ''}")
        return done

    def _wait(self, args: Sequence[str], message: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            code, out = self.runner(self.command(*args))
            if code == 0:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(f"{message} within {self.timeout:.0f}s: {out}")
            self.sleep(self.poll)
