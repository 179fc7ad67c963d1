"""Kubelet's way to get a wasm image: PullImage from a registry, then a pod that runs it.

Every other CRI test imports its images with ctr; a node pulls them, and the pull path chooses
platforms and unpacks layers on its own rules (containerd 2.x sends it through the transfer
service with the host's platform). The registry is tests/registry.py on a loopback port;
each image is pulled both as a whole index (a multi-platform push) and as its bare manifest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.containerd import CRI_NAMESPACE
from tests.cri import CriClient
from tests.e2e.helpers import make_image, tool_files
from tests.e2e.test_cri_wasm import Bed, assert_nothing_left, wasm_pod
from tests.registry import Registry
from wasmtime_shim.images.build import ImageConfig


@pytest.fixture(scope="module")
def registry(cri_bed: Bed) -> Iterator[Registry]:
    with Registry() as served:
        served.hosts_toml(cri_bed[0].cri_dir / "certs.d")
        yield served


@pytest.mark.parametrize("shape", ["index", "manifest"])
def test_a_pulled_wasm_image_runs_in_a_pod(
    cri_bed: Bed, crictl: CriClient, registry: Registry, shape: str
) -> None:
    containerd = cri_bed[0]
    built = make_image(
        containerd.base / "pull-images",
        tool_files(),
        ref="localhost/pull/tools:1",
        config=ImageConfig(entrypoint=("/bin/hello.wasm",)),
    )
    ref = registry.add(built.archive, "wasm/tools", shape, whole_index=shape == "index")
    pod = wasm_pod(crictl, f"pulled-{shape}")
    try:
        image_id = crictl.pull_image(ref, pod=pod)
        assert image_id.startswith("sha256:"), image_id
        hello = crictl.create_container(pod, "hello", ref, args=["pulled"])
        crictl.start_container(hello)
        status = crictl.wait_exited(hello)
        assert status.exit_code == 0, (status, crictl.read_log(hello))
        crictl.wait_for_log(hello, "argv[1]=pulled")
        crictl.stop_pod(pod.id)
        crictl.remove_pod(pod.id)
        assert_nothing_left(containerd, crictl, pod, [hello])
    finally:
        crictl.cleanup()
        containerd.ctr("images", "rm", "--sync", ref, namespace=CRI_NAMESPACE, check=False)
