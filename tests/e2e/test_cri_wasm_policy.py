"""Issue 6 acceptance, continued: crun's wasm annotations and StopContainer, through containerd's
real CRI plugin and the ``wasmtime`` handler (see test_cri_wasm.py for the pod, namespace and
shim tests; the helpers live there).

Annotations go on the POD: containerd 1.6 copies the pod's annotations that the handler's
``pod_annotations`` allows into every container's spec (``container_annotations`` does the same
for a container's own). All pods here use the host network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.containerd import CRI_NAMESPACE
from tests.cri import CONTAINER_EXITED, CriClient, CriError, join_lines
from tests.e2e.test_cri_wasm import (
    HANDLER,
    SIGKILL_EXIT,
    SIGTERM_EXIT,
    VARIANT,
    Bed,
    assert_nothing_left,
    exe_of,
    wasm_pod,
)
from tests.pause import build as native

# ------------------------------------------------------------------ crun's annotations


@pytest.mark.parametrize(("name", "value"), [(VARIANT, "compat"), (HANDLER, "wasm")])
def test_all_wasm_annotation_refuses_a_native_container(
    cri_bed: Bed, crictl: CriClient, cri_wasm_image: str, name: str, value: str
) -> None:
    """On the pod: every container must be wasm; the sandbox itself still runs natively."""
    containerd, wasm_image = cri_bed[0], cri_wasm_image
    pod = wasm_pod(crictl, "compat", annotations={name: value})
    assert exe_of(crictl.sandbox_pid(pod.id)) == native.PAUSE_PATH

    wasm = crictl.create_container(pod, "wasm", wasm_image, args=["5"])
    # containerd 1.6 copies the pod's annotation into the container's spec (pod_annotations).
    assert crictl.container_info(wasm)["runtimeSpec"]["annotations"][name] == value
    crictl.start_container(wasm)
    assert crictl.wait_exited(wasm).exit_code == 5
    assert "hello from wasm" in crictl.wait_for_log(wasm, "hello from wasm")

    # containerd 1.6 creates the task (our Create) in StartContainer: that is what fails.
    side = crictl.create_container(pod, "side", native.SIDECAR_IMAGE)
    with pytest.raises(CriError) as refused:
        crictl.start_container(side)
    message = refused.value.details
    assert refused.value.method == "StartContainer", refused.value
    assert f"{name}={value}" in message and f"{native.SIDECAR_PATH} is an ELF" in message, message
    status = crictl.container_status(side)
    assert (status.state, status.reason) == (CONTAINER_EXITED, "StartError"), status
    assert f"{name}={value}" in status.message, status.message  # what kubectl describe shows
    assert not containerd.ctr("tasks", "ls", "-q", namespace=CRI_NAMESPACE).stdout.count(side)

    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)
    assert_nothing_left(containerd, crictl, pod, [wasm, side])


@pytest.mark.parametrize(("name", "value"), [(VARIANT, "compat-smart"), (HANDLER, "wasm-smart")])
def test_smart_annotation_mixes_wasm_and_native(
    cri_bed: Bed, crictl: CriClient, cri_wasm_image: str, name: str, value: str
) -> None:
    containerd, wasm_image = cri_bed[0], cri_wasm_image
    pod = wasm_pod(crictl, "smart", annotations={name: value})
    wasm = crictl.create_container(pod, "wasm", wasm_image, args=["3"])
    side = crictl.create_container(pod, "side", native.SIDECAR_IMAGE, args=["native", "side"])
    crictl.start_container(wasm)
    crictl.start_container(side)

    assert crictl.wait_exited(wasm).exit_code == 3
    assert crictl.wait_for_log(wasm, "argv[1]=3", stream="stdout")[0] == "hello from wasm"
    lines = crictl.wait_for_log(side, "netns net:", stream="stdout")
    assert lines[0] == "native side"
    side_pid = crictl.container_pid(side)
    assert exe_of(side_pid) == native.SIDECAR_PATH

    crictl.stop_container(side, timeout=10)
    exited = crictl.wait_exited(side)
    assert (exited.exit_code, exited.reason) == (0, "Completed"), exited
    crictl.wait_for_log(side, "sidecar: stopping on signal 15")
    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)
    assert_nothing_left(containerd, crictl, pod, [wasm, side])


# ------------------------------------------------------------------ StopContainer


def test_stop_container_ends_long_running_wasm_with_sigterm(
    cri_bed: Bed, crictl: CriClient, cri_wasm_image: str
) -> None:
    containerd, wasm_image = cri_bed[0], cri_wasm_image
    """A wasm guest cannot catch signals: SIGTERM ends a sleeping and a busy one (143).

    The grace period is long on purpose: a shim that let the guest ignore SIGTERM would only
    stop it with the SIGKILL after it, and the exit code would say 137.
    """
    pod = wasm_pod(crictl, "stop")
    sleeper = crictl.create_container(pod, "sleep", wasm_image, command=["/bin/sleep.wasm"])
    spinner = crictl.create_container(pod, "spin", wasm_image, command=["/bin/spin.wasm"])
    stubborn = crictl.create_container(
        pod, "stubborn", native.SIDECAR_IMAGE, env={"SIDECAR_IGNORE_TERM": "1"}
    )
    for cid in (sleeper, spinner, stubborn):
        crictl.start_container(cid)
    crictl.wait_for_log(sleeper, "sleeping 3600")
    crictl.wait_for_log(spinner, "spinning")
    crictl.wait_for_log(stubborn, "netns net:")

    for cid in (sleeper, spinner):
        pid = crictl.container_pid(cid)
        crictl.stop_container(cid, timeout=20)
        exited = crictl.wait_exited(cid)
        assert (exited.exit_code, exited.reason) == (SIGTERM_EXIT, "Error"), exited
        assert not Path(f"/proc/{pid}").exists()
    assert "slept" not in join_lines(crictl.read_log(sleeper))

    # What ignores SIGTERM (only a native sidecar can) gets the SIGKILL after the timeout.
    crictl.stop_container(stubborn, timeout=1)
    assert crictl.wait_exited(stubborn).exit_code == SIGKILL_EXIT

    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)
    assert_nothing_left(containerd, crictl, pod, [sleeper, spinner, stubborn])
