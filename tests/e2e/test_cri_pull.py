"""Kubelet's way to get a wasm image: PullImage from a registry, then a pod that runs it.

Every other CRI test imports its images with ctr; a node pulls them, and the pull path chooses
platforms and unpacks layers on its own rules (containerd 2.x sends it through the transfer
service with the host's platform). The registry is tests/registry.py on a loopback port; each
image of both formats ``wasmtime-shim build`` writes (runwasi's layout, the default, and
rootfs) is pushed as its manifest (what ``skopeo copy oci-archive:...`` or a plain push
gives) and as an index around it (a multi-platform push), and either runs or fails with
containerd's own error where containerd cannot pass it on (``expected_refusal``; the README's
"Images" table says the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import versions
from tests.containerd import CRI_NAMESPACE
from tests.cri import CriClient, CriError
from tests.e2e.test_cri_wasm import Bed, assert_nothing_left, wasm_pod
from tests.registry import Registry
from wasmtime_shim.images.artifact import build_runwasi_image
from wasmtime_shim.images.build import ImageConfig, build_image


@pytest.fixture(scope="module")
def registry(cri_bed: Bed) -> Iterator[Registry]:
    with Registry() as served:
        served.hosts_toml(cri_bed[0].cri_dir / "certs.d")
        yield served


def expected_refusal(release: versions.Binaries, fmt: str, shape: str) -> tuple[str, str] | None:
    """(CRI call, containerd's own error) where the pull path cannot run the image, or None.

    - An index whose only platform is a wasm one matches no platform kubelet's pull asks for
      (the host's), on every release: push the image's manifest, not an index around it.
    - runwasi's layout (layers that are no filesystem) passes containerd's unpack only from
      1.6.25 / 1.7.7 on (PR #9142); Debian's 1.6.20 refuses it.
    - A rootfs image's config names a wasm platform, which 2.x's pull (its transfer service,
      asked for the host's platform) does not unpack: the pull succeeds, and CreateContainer
      finds no snapshot. runwasi's layout has nothing to unpack.
    """
    if shape == "index":
        return "PullImage", "no match for platform in manifest"
    if fmt == "runwasi" and release.release is versions.Release.V1_6:
        return "PullImage", "mismatched image rootfs and manifest layers"
    if fmt == "rootfs" and release.major >= 2:
        return "CreateContainer", "does not exist"
    return None


@pytest.mark.parametrize("shape", ["manifest", "index"])
@pytest.mark.parametrize("fmt", ["runwasi", "rootfs"])
def test_a_pulled_wasm_image_runs_in_a_pod_or_containerd_says_why(
    cri_bed: Bed,
    crictl: CriClient,
    registry: Registry,
    build_wasm: Callable[[str], Path],
    containerd_release: versions.Binaries,
    fmt: str,
    shape: str,
) -> None:
    containerd = cri_bed[0]
    ref = f"localhost/pull/{fmt}:1"
    config = ImageConfig(entrypoint=("/bin/hello.wasm",))
    if fmt == "rootfs":
        image = build_image({"/bin/hello.wasm": build_wasm("hello")}, ref=ref, config=config)
    else:
        wasm = build_wasm("hello").read_bytes()
        image = build_runwasi_image(wasm, ref=ref, config=config, title="hello.wasm")
    archive = image.write(containerd.base / "pull-images" / f"{fmt}.tar")
    ref = registry.add(archive, f"wasm/{fmt}", shape, whole_index=shape == "index")
    refusal = expected_refusal(containerd_release, fmt, shape)
    pod = wasm_pod(crictl, f"pulled-{fmt}-{shape}")
    try:
        if refusal is not None:
            with pytest.raises(CriError) as refused:
                crictl.pull_image(ref, pod=pod)
                crictl.create_container(pod, "hello", ref, args=["pulled"])
            assert (refused.value.method, refusal[1] in refused.value.details) == (
                refusal[0],
                True,
            ), refused.value
        else:
            image_id = crictl.pull_image(ref, pod=pod)
            assert image_id.startswith("sha256:"), image_id
            hello = crictl.create_container(pod, "hello", ref, args=["pulled"])
            crictl.start_container(hello)
            status = crictl.wait_exited(hello)
            assert status.exit_code == 0, (status, crictl.read_log(hello))
            crictl.wait_for_log(hello, "argv[1]=pulled")
        crictl.stop_pod(pod.id)
        crictl.remove_pod(pod.id)
        assert_nothing_left(containerd, crictl, pod, [])
    finally:
        crictl.cleanup()
        containerd.ctr("images", "rm", "--sync", ref, namespace=CRI_NAMESPACE, check=False)
