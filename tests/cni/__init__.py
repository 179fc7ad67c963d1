"""A fake CNI network for the CRI tests: pods get their own network namespace, no traffic.

containerd 1.6's CRI plugin gives a pod its own network namespace only through CNI, and wants
an ``eth0`` with an IP back. ``fake-eth0`` (a /bin/sh plugin, see its header) answers with a
dummy eth0 at 127.0.0.2/8 inside the pod's namespace, and doubles as the ``loopback`` plugin
containerd always runs first. ``install`` puts it and a conflist into a containerd's private
CNI dirs; do that BEFORE containerd starts, so its CRI plugin loads the network at start-up
rather than on a later file event (a pod started in between fails its network setup, and
containerd 1.6 then leaks the pod's namespace mount under /var/run/netns).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PLUGIN = Path(__file__).resolve().with_name("fake-eth0")
PLUGIN_NAMES = ("fake-eth0", "loopback")
NETWORK_NAME = "fake-eth0"
CNI_VERSION = "0.4.0"
CONFLIST_NAME = "10-fake-eth0.conflist"
# Where the plugin puts its interface, and the address it gives it (loopback range only).
POD_INTERFACE = "eth0"
POD_IP = "127.0.0.2"


def conflist() -> dict[str, object]:
    """The network list containerd loads: one network whose only plugin is ``fake-eth0``."""
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{"type": "fake-eth0"}],
    }


def install(bin_dir: Path, conf_dir: Path) -> list[Path]:
    """Copy the plugin into ``bin_dir`` (as each of PLUGIN_NAMES) and the conflist into
    ``conf_dir``; returns the files written."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLUGIN_NAMES:
        target = bin_dir / name
        shutil.copyfile(PLUGIN, target)
        target.chmod(0o755)
        written.append(target)
    conf = conf_dir / CONFLIST_NAME
    conf.write_text(json.dumps(conflist(), indent=2) + "\n")
    written.append(conf)
    return written
