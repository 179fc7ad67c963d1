"""Where each Kubernetes distribution keeps containerd's config, and how it restarts it.

Plain containerd reads /etc/containerd/config.toml. k3s and RKE2 regenerate their config.toml
on every start, so the durable place is the Go template `config.toml.tmpl` beside it; one we
create starts with `{{ template "base" . }}` (k3s's own generated configuration) and only adds
our table. k3s and RKE2 also register wasm shims by themselves: at start they look for
`containerd-shim-wasmtime-v1` (and other shims) in a few directories (`detects`) and add a
`wasmtime` runtime for any they find, so install keeps the binary out of those directories and
leaves a runtime that the generated config already has alone (install.py).
MicroK8s renders containerd-template.toml. k0s merges every file in /etc/k0s/containerd.d/,
so we own a whole drop-in file there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shim.errors import InvalidArgument


class ConfigEdit(enum.Enum):
    EDIT = "edit"  # add our table to the distribution's file
    DROP_IN = "drop-in"  # write (and on uninstall delete) a whole file of our own


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    config: str  # absolute path on the node
    kind: ConfigEdit
    template: bool  # Go template: `{{ }}` lines are not TOML
    generated: str | None  # the file a template flavor renders (its `version` is the base's)
    units: tuple[str, ...]  # systemd units to restart; the first active one wins
    socket: str  # containerd's gRPC socket, to check it came back
    version: int | None = None  # config version when the flavor dictates it
    detects: tuple[str, ...] = ()  # dirs where the distribution finds wasm shims by itself


# Where k3s (and RKE2, which runs k3s's agent) looks for wasm shims at every start
# (pkg/agent/containerd/runtimes.go, findWasiRuntimes): a containerd-shim-wasmtime-v1 found
# there becomes a `wasmtime` runtime in the generated config, whose runtime_type depends on the
# k3s release (io.containerd.wasmtime.v1 in early ones, .v2 later), not on us.
K3S_WASM_SHIM_DIRS = ("/opt/kwasm/bin", "/usr/bin", "/usr/sbin")

FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor(
            "containerd",
            "/etc/containerd/config.toml",
            ConfigEdit.EDIT,
            False,
            None,
            ("containerd",),
            "/run/containerd/containerd.sock",
        ),
        Flavor(
            "k3s",
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
            ConfigEdit.EDIT,
            True,
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            ("k3s", "k3s-agent"),
            "/run/k3s/containerd/containerd.sock",
            detects=K3S_WASM_SHIM_DIRS,
        ),
        Flavor(
            "rke2",
            "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl",
            ConfigEdit.EDIT,
            True,
            "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
            ("rke2-server", "rke2-agent"),
            "/run/k3s/containerd/containerd.sock",
            detects=K3S_WASM_SHIM_DIRS,
        ),
        Flavor(
            "microk8s",
            "/var/snap/microk8s/current/args/containerd-template.toml",
            ConfigEdit.EDIT,
            False,
            None,
            ("snap.microk8s.daemon-containerd",),
            "/var/snap/microk8s/common/run/containerd.sock",
        ),
        Flavor(
            "k0s",
            "/etc/k0s/containerd.d/wasmtime-shim.toml",
            ConfigEdit.DROP_IN,
            False,
            None,
            ("k0sworker", "k0scontroller"),
            "/run/k0s/containerd.sock",
            version=2,
        ),
    )
}


def flavor(name: str) -> Flavor:
    try:
        return FLAVORS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown flavor {name!r}; choose one of {', '.join(FLAVORS)}"
        ) from None
