"""The CRI test bed works: our CRI proto, the kubelet-like client, the pause and sidecar images.

Everything here goes through containerd's real CRI plugin with its DEFAULT handler (runc), so
a failure points at the test bed, not at the shim. Pods use the host network (the only network
these tests may use; see issue 6). The wasm pod tests build on the same fixtures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shim.api.k8s.cri.v1 import api_pb2 as cri
from tests.containerd import CRI_NAMESPACE, PrivateContainerd
from tests.cri import (
    CONTAINER_CREATED,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
    CriClient,
    CriError,
    LogLine,
    join_lines,
    parse_cri_log,
)
from tests.pause import build as native
from tests.prereq import require

CGROUP_ROOT = Path("/sys/fs/cgroup")


# ------------------------------------------------------------------ no containerd needed


def test_proto_keeps_cri_api_field_numbers() -> None:
    """Spot checks against k8s.io/cri-api v1: a renumbered field would break the wire."""
    expected = {
        ("RunPodSandboxRequest", "runtime_handler"): 2,
        ("PodSandboxConfig", "log_directory"): 3,
        ("PodSandboxConfig", "linux"): 8,
        ("LinuxSandboxSecurityContext", "namespace_options"): 1,
        ("LinuxSandboxSecurityContext", "run_as_group"): 8,
        ("ContainerConfig", "log_path"): 11,
        ("ContainerConfig", "CDI_devices"): 17,
        ("ContainerStatus", "exit_code"): 7,
        ("ContainerStatus", "log_path"): 15,
        ("ImageSpec", "user_specified_image"): 18,
        ("Mount", "uidMappings"): 6,
        ("PodSandboxStatusResponse", "containers_statuses"): 3,
    }
    for (message, field), number in expected.items():
        descriptor = cri.DESCRIPTOR.message_types_by_name[message]
        assert descriptor.fields_by_name[field].number == number, (message, field)
    assert cri.DESCRIPTOR.package == "runtime.v1"
    assert cri.NODE == 2 and cri.CONTAINER_EXITED == 2 and cri.SIGNAL_SIGTERM == 23
    methods = cri.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name
    assert {"RunPodSandbox", "CreateContainer", "StopContainer", "ContainerStatus"} <= set(methods)


def test_cri_log_parser_joins_partials_and_rejects_raw_output() -> None:
    text = (
        "2024-01-01T00:00:00.1Z stdout P hel\n"
        "2024-01-01T00:00:00.2Z stderr F oops\n"
        "2024-01-01T00:00:00.3Z stdout F lo world\n"
        "2024-01-01T00:00:00.4Z stdout F \n"
    )
    entries = parse_cri_log(text)
    assert entries[1] == LogLine("2024-01-01T00:00:00.2Z", "stderr", False, "oops")
    assert entries[0].partial and not entries[2].partial
    assert join_lines(entries) == ["oops", "hello world", ""]
    assert join_lines(entries, "stdout") == ["hello world", ""]
    with pytest.raises(ValueError, match="line 1"):
        parse_cri_log("hello world\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_cri_log("t stdout F ok\nt stdout X bad\n")


def test_native_images_are_deterministic_and_host_platform() -> None:
    problem = native.toolchain_problem()
    require(problem is None, problem or "")
    first, second = native.pause_image(), native.pause_image()
    assert first.manifest_digest == second.manifest_digest
    assert first.archive == second.archive
    assert native.sidecar_image().manifest_digest != first.manifest_digest
    assert native.host_platform()["os"] == "linux"


# ------------------------------------------------------------------ containerd's CRI plugin


def test_cri_sees_the_imported_images(crictl: CriClient) -> None:
    assert crictl.version().runtime_api_version == "v1"
    tags = {tag for image in crictl.list_images() for tag in image.repo_tags}
    assert {native.PAUSE_IMAGE, native.SIDECAR_IMAGE} <= tags
    assert crictl.image_status("localhost/cri-testbed/not-there:1") is None


def test_native_sidecar_pod_full_lifecycle(
    cri_bed: tuple[PrivateContainerd, CriClient], crictl: CriClient
) -> None:
    """RunPodSandbox -> Create/Start -> Status -> CRI log -> Stop -> StopPod -> RemovePod."""
    containerd = cri_bed[0]
    pod = crictl.run_pod("lifecycle", namespace="testbed")
    status = crictl.pod_status(pod.id).status
    assert status.state == SANDBOX_READY
    assert status.linux.namespaces.options.network == cri.NODE
    pause_pid = crictl.sandbox_pid(pod.id)
    assert _wait_exec(pause_pid, native.PAUSE_PATH) == native.PAUSE_PATH
    # Host network: the pause process is in our network namespace (the only allowed one).
    assert os.stat(f"/proc/{pause_pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino

    cid = crictl.create_container(pod, "side", native.SIDECAR_IMAGE, args=["hello", "sidecar"])
    assert crictl.container_status(cid).state == CONTAINER_CREATED
    assert [c.id for c in crictl.list_containers(pod_id=pod.id)] == [cid]
    crictl.start_container(cid)
    running = crictl.wait_container_state(cid, CONTAINER_RUNNING)
    assert running.started_at > 0
    pid = crictl.container_pid(cid)
    assert pid not in (0, pause_pid)
    assert _wait_exec(pid, native.SIDECAR_PATH) == native.SIDECAR_PATH
    assert list(CGROUP_ROOT.glob(f"*/{CRI_NAMESPACE}/{cid}")), "the leak check below would be moot"

    lines = crictl.wait_for_log(cid, lambda ls: len(ls) >= 3)
    entries = crictl.read_log(cid)
    assert running.log_path == str(pod.log_directory / "side" / "0.log")
    assert join_lines(entries, "stdout")[:2] == [
        "hello sidecar",
        f"netns net:[{os.stat('/proc/self/ns/net').st_ino}]",
    ]
    assert join_lines(entries, "stderr") == ["sidecar: this line goes to stderr"]
    assert all(entry.time.endswith("Z") for entry in entries), lines

    crictl.stop_container(cid, timeout=10)
    exited = crictl.wait_exited(cid)
    assert (exited.exit_code, exited.reason) == (0, "Completed")
    assert exited.finished_at >= exited.started_at
    crictl.wait_for_log(cid, "sidecar: stopping on signal 15", stream="stdout")
    assert not Path(f"/proc/{pid}").exists()

    crictl.remove_container(cid)
    assert crictl.list_containers(pod_id=pod.id) == []
    with pytest.raises(CriError) as missing:
        crictl.container_status(cid)
    assert missing.value.code.name == "NOT_FOUND"

    crictl.stop_pod(pod.id)
    assert crictl.pod_status(pod.id).status.state == SANDBOX_NOTREADY
    assert not Path(f"/proc/{pause_pid}").exists()
    crictl.remove_pod(pod.id)
    assert pod.id not in {p.id for p in crictl.list_pods()}
    _assert_nothing_left(containerd, [pod.id, cid])


def test_stop_pod_stops_running_containers_and_reports_exit_codes(
    cri_bed: tuple[PrivateContainerd, CriClient], crictl: CriClient
) -> None:
    containerd = cri_bed[0]
    pod = crictl.run_pod("exits")
    failing = crictl.create_container(pod, "fails", native.SIDECAR_IMAGE, env={"SIDECAR_EXIT": "3"})
    stubborn = crictl.create_container(
        pod, "stubborn", native.SIDECAR_IMAGE, env={"SIDECAR_IGNORE_TERM": "1"}
    )
    lingering = crictl.create_container(
        pod, "lingers", native.SIDECAR_IMAGE, env={"SIDECAR_TICK_MS": "50"}
    )
    for cid in (failing, stubborn, lingering):
        crictl.start_container(cid)

    done = crictl.wait_exited(failing)
    assert (done.exit_code, done.reason) == (3, "Error")

    # SIGTERM is ignored, so only the SIGKILL after the grace period ends it: 128 + 9.
    crictl.wait_container_state(stubborn, CONTAINER_RUNNING)
    crictl.stop_container(stubborn, timeout=1)
    assert crictl.wait_exited(stubborn).exit_code == 137

    crictl.wait_for_log(lingering, "tick 1")
    crictl.stop_pod(pod.id)
    assert crictl.container_status(lingering).state == CONTAINER_EXITED
    crictl.remove_pod(pod.id)
    assert crictl.list_containers(pod_id=pod.id) == []
    _assert_nothing_left(containerd, [pod.id, failing, stubborn, lingering])


# ------------------------------------------------------------------ helpers


def _wait_exec(pid: int, path: str, timeout: float = 10.0) -> str:
    """Wait until ``pid`` runs ``path``; return its exe link.

    StartContainer returns once runc's init was told to go, which can be a moment before its
    execve: until then the process is still runc. Bounded, and the caller asserts the result.
    """
    deadline = time.monotonic() + timeout
    while True:
        exe = os.readlink(f"/proc/{pid}/exe")
        if exe == path or time.monotonic() >= deadline:
            return exe
        time.sleep(0.02)


def _assert_nothing_left(containerd: PrivateContainerd, ids: list[str]) -> None:
    """No shim, mount, bundle, task, container or cgroup of these ids is left."""
    leaks = containerd.wait_for_no_leaks(CRI_NAMESPACE)
    assert leaks == [], "\n".join(map(str, leaks))
    assert containerd.ctr("tasks", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split() == []
    left = set(containerd.ctr("containers", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split())
    assert left.isdisjoint(ids)
    mounts = Path("/proc/self/mountinfo").read_text()
    # With no cgroup_parent, containerd's CRI puts each task in "/k8s.io/<id>" (cgroupfs).
    cgroups = [str(p) for i in ids for p in CGROUP_ROOT.glob(f"*/{CRI_NAMESPACE}/{i}")]
    for ident in ids:
        assert ident not in mounts, f"a mount of {ident} is left"
    assert cgroups == [], f"cgroups left: {cgroups}"
