"""CNI networks for the CRI tests: a fake one (no traffic) and Debian's real plugins.

containerd 1.6's CRI plugin gives a pod its own network namespace only through CNI, and wants
an ``eth0`` with an IP back. ``fake-eth0`` (a /bin/sh plugin, see its header) answers with a
dummy eth0 at 127.0.0.2/8 inside the pod's namespace, and doubles as the ``loopback`` plugin
containerd always runs first. ``install`` puts it and a conflist into a containerd's private
CNI dirs; do that BEFORE containerd starts, so its CRI plugin loads the network at start-up
rather than on a later file event (a pod started in between fails its network setup, and
containerd 1.6 then leaks the pod's namespace mount under /var/run/netns).

``install_bridge`` sets up what a node really runs instead: Debian's containernetworking-plugins
(``bridge`` with ``host-local`` addresses, and ``loopback``) for a containerd that runs in a
network namespace the test made (``PrivateContainerd(netns=...)``), so the bridge, the veths
and the 10.88.7.0/24 addresses exist only there; host-local keeps its leases in a private
directory instead of /var/lib/cni.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.prereq import require

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


DEBIAN_PLUGIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
BRIDGE_PLUGINS = ("bridge", "host-local", "loopback")
BRIDGE_NETWORK = "wasm-bridge"
BRIDGE_DEVICE = "wst0"
BRIDGE_SUBNET = "10.88.7.0/24"
BRIDGE_CONFLIST = "10-wasm-bridge.conflist"


def bridge_conflist(lease_dir: Path) -> dict[str, object]:
    """A bridge network as a node's default CNI config has it, minus masquerading (no
    iptables rule is written anywhere) and with host-local's leases in ``lease_dir``."""
    return {
        "cniVersion": CNI_VERSION,
        "name": BRIDGE_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE_DEVICE,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": BRIDGE_SUBNET}]],
                    "dataDir": str(lease_dir),
                },
            }
        ],
    }


def install_bridge(bin_dir: Path, conf_dir: Path, lease_dir: Path) -> list[Path]:
    """Link Debian's plugins into ``bin_dir`` and write the bridge conflist into ``conf_dir``
    (before containerd starts, as ``install``); skips (fails under CI) without the package."""
    missing = [name for name in BRIDGE_PLUGINS if not (DEBIAN_PLUGIN_DIR / name).exists()]
    require(
        not missing, f"CNI plugins {missing} missing (Debian package containernetworking-plugins)"
    )
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    lease_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BRIDGE_PLUGINS:
        target = bin_dir / name
        target.unlink(missing_ok=True)
        target.symlink_to(DEBIAN_PLUGIN_DIR / name)
        written.append(target)
    conf = conf_dir / BRIDGE_CONFLIST
    conf.write_text(json.dumps(bridge_conflist(lease_dir), indent=2) + "\n")
    written.append(conf)
    return written
