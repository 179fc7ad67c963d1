"""A wasm pod on a real CNI network: Debian's bridge and host-local plugins, as a node runs them.

The other CRI tests give pods the fake network of tests/cni (a dead-end eth0). Here the CRI
containerd runs inside a network namespace this module creates (``PrivateContainerd(netns=)``,
joined with ``nsenter --net`` only), and its CNI config is a real ``bridge`` network with
``host-local`` addresses in 10.88.7.0/24: the bridge, the pod's veth and every address exist
only in that namespace, never in the host's network. A packet sent from there to the pod's
address reaches the pod's namespace (the kernel there answers a connection to a closed port
with a reset, which is what the test looks for: nothing is listening, nothing is sent
anywhere else). Removing the pod must give its address back and leave no veth behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cni, versions
from tests.containerd import CRI_NAMESPACE, PrivateContainerd, _fresh_base
from tests.cri import CONTAINER_RUNNING, CriClient, cri_testbed
from tests.e2e.helpers import make_image, tool_files
from tests.e2e.test_cri_wasm import assert_nothing_left, ns_inode, wasm_pod
from tests.pause import build as native
from tests.prereq import require
from wasmtime_shim.images.build import ImageConfig

IMAGE = "localhost/cri-network/tools:1"
PROBE_PORT = 9  # "discard": closed in the pod, so a connection gets a reset from its kernel

Bed = tuple[PrivateContainerd, CriClient, Path, Path]


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def bridge_bed(containerd_release: versions.Binaries) -> Iterator[Bed]:
    """A CRI containerd in a fresh network namespace with the real bridge network, the wasm
    tools image imported; yields (containerd, client, netns file, lease dir)."""
    require(os.geteuid() == 0, "needs root to make network namespaces")
    problem = native.toolchain_problem()
    require(problem is None, problem or "")
    name = f"wst-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    netns = Path("/run/netns") / name
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        base = _fresh_base()
        leases = base / "cni-leases"
        cni.install_bridge(base / "cri" / "cni-bin", base / "cri" / "cni-conf", leases)
        with cri_testbed(base, netns=netns) as (containerd, client):
            entry = ImageConfig(entrypoint=("/bin/hello.wasm",))
            image = make_image(base / "wasm-images", tool_files(), ref=IMAGE, config=entry)
            containerd.import_image(image.archive, namespace=CRI_NAMESPACE)
            client.wait_image(IMAGE)
            yield containerd, client, netns, leases
        assert not containerd.stop_report, "\n".join(map(str, containerd.stop_report))
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


def _connect_from(netns: Path, address: str) -> str:
    """Try a TCP connection from inside ``netns``; the errno name it ends with."""
    probe = (
        "import errno, socket\n"
        "s = socket.socket(); s.settimeout(5)\n"
        f"code = s.connect_ex(({address!r}, {PROBE_PORT}))\n"
        "print(errno.errorcode.get(code, code))\n"
    )
    done = subprocess.run(
        ["nsenter", f"--net={netns}", "--", "python3", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_a_wasm_pod_gets_an_address_on_a_real_bridge_and_gives_it_back(
    bridge_bed: Bed,
) -> None:
    containerd, client, netns, leases = bridge_bed
    pod = wasm_pod(client, "bridged", host_network=False)
    wasm = side = address = ""
    try:
        address = client.pod_status(pod.id).status.network.ip
        assert ipaddress.ip_address(address) in ipaddress.ip_network(cni.BRIDGE_SUBNET), address
        wasm = client.create_container(pod, "wasm", IMAGE, command=["/bin/sleep.wasm"])
        side = client.create_container(pod, "side", native.SIDECAR_IMAGE)
        client.start_container(wasm)
        client.start_container(side)
        client.wait_for_log(wasm, "sleeping")
        assert client.container_status(wasm).state == CONTAINER_RUNNING
        wasm_pid, pause = client.container_pid(wasm), client.sandbox_pid(pod.id)

        # The wasm guest's process is in the pod's namespace, where the bridge plugin put
        # eth0 with the pod's address; the host's network never saw any of it.
        assert ns_inode(wasm_pid, "net") == ns_inode(pause, "net")
        inside = subprocess.run(
            ["nsenter", f"--net=/proc/{pause}/ns/net", "--", "ip", "-j", "addr", "show", "eth0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        addrs = json.loads(inside.stdout)
        found = {a["local"] for link in addrs for a in link.get("addr_info", [])}
        assert address in found, addrs
        assert cni.BRIDGE_DEVICE in _ip("-n", netns.name, "-o", "link", "show")
        assert cni.BRIDGE_DEVICE not in _ip("-o", "link", "show"), "the bridge is on the host"
        assert (leases / cni.BRIDGE_NETWORK / address).exists(), "host-local keeps no lease"
        # From containerd's namespace the address is reachable: the pod's kernel refuses.
        assert _connect_from(netns, address) == "ECONNREFUSED"

        client.stop_pod(pod.id)
        client.remove_pod(pod.id)
    finally:
        client.cleanup()
    assert_nothing_left(containerd, client, pod, [wasm, side])
    assert not (leases / cni.BRIDGE_NETWORK / address).exists(), "the address was not released"
    links = _ip("-n", netns.name, "-o", "link", "show")
    assert "veth" not in links, links
