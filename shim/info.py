"""`<shim> -info`: the runtime's name, version and OCI features, for containerd 2.x.

containerd 2.x runs `<shim> -info` with the runtime's options (a protobuf ``Any``) on stdin and
reads a ``containerd.types.RuntimeInfo`` from stdout: its CRI plugin does so for every runtime
handler at start-up (whether pods of that handler may have user namespaces or recursive
read-only mounts), ``ctr plugins inspect-runtime`` shows it, and the task manager asks before
it creates a task with idmapped mounts. The features are a runtime-spec "features" document
(JSON in an ``Any``), filled from the tables the code itself acts on (mount options, seccomp
actions and operators, capabilities, namespaces), so it cannot claim what the shim refuses.

It describes what a *wasm* container gets: a native container of a pod goes to runc, which
supports more (user namespaces, hooks, AppArmor), but the answer is per runtime handler and
a handler's pods may hold wasm containers, so the smaller set is the true one.
"""

from __future__ import annotations

import json
import os
import select
from typing import Any

from shim import RUNTIME_NAME, __version__

FEATURES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
# The OCI runtime-spec versions whose config.json the shim reads (shim/oci/spec.py).
OCI_VERSION_MIN = "1.0.0"
OCI_VERSION_MAX = "1.2.1"
# containerd writes the options and closes stdin at once; a caller that never closes it
# (a person at a terminal) gets the answer without them after this long.
STDIN_WAIT = 2.0
STDIN_LIMIT = 1 << 20


def features() -> dict[str, Any]:
    """The runtime-spec features document of a wasm container (see the module docstring)."""
    from shim.confine import privileges, seccomp
    from shim.confine.policy import PROCESS_NAMESPACES
    from shim.oci import mounts

    namespaces = ["mount", "pid", *PROCESS_NAMESPACES]
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": [],  # a wasm container's spec hooks are not run
        "mountOptions": sorted([*mounts.mount_option_names()]),
        "linux": {
            "namespaces": sorted(namespaces),
            "capabilities": sorted(privileges.CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": sorted(seccomp.action_names()),
                "operators": sorted(seccomp.operator_names()),
                "supportedFlags": sorted(seccomp.flag_names()),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
    }


def runtime_info(options: bytes) -> bytes:
    """The serialized RuntimeInfo answering a request whose options were ``options``."""
    from google.protobuf import any_pb2

    from shim.api.containerd.types import introspection_pb2

    info = introspection_pb2.RuntimeInfo(
        name=RUNTIME_NAME,
        version=introspection_pb2.RuntimeVersion(version=__version__),
    )
    if options:
        echoed = any_pb2.Any()
        echoed.ParseFromString(options)
        info.options.CopyFrom(echoed)
    info.features.type_url = FEATURES_TYPE_URL
    info.features.value = json.dumps(features(), sort_keys=True).encode()
    return info.SerializeToString()


def read_options(fd: int = 0) -> bytes:
    """Whatever containerd wrote on stdin, up to EOF: at most 1 MiB, and each read waits at
    most ``STDIN_WAIT`` s (containerd writes the options at once and closes)."""
    if os.isatty(fd):
        return b""
    data = b""
    while len(data) <= STDIN_LIMIT:
        try:
            ready, _, _ = select.select([fd], [], [], STDIN_WAIT)
        except (OSError, ValueError):
            return data
        if not ready:
            return data
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk
    raise ValueError(f"-info: more than {STDIN_LIMIT} bytes of options on stdin")
