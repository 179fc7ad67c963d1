"""The node side: install the shim binary, register it in containerd's config, check a node,
and generate the Kubernetes manifests that send wasm pods to prepared nodes.

config.py edits config.toml (round-trip, byte-preserving); flavors.py knows where each
distribution keeps it; files.py places the binary; install.py ties them together with a
receipt for an exact uninstall; restart.py restarts containerd; doctor.py checks a node;
manifests.py and yaml.py write the Kubernetes side (the DaemonSet labels its node with
kubectl); commands.py is the argument parsing of install, uninstall, doctor and manifests.
"""

from __future__ import annotations
