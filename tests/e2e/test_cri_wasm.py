"""Issue 6 acceptance: wasm pods through containerd's real CRI plugin and the ``wasmtime`` handler.

Everything goes the way kubelet goes (``tests/cri.py``): RunPodSandbox with runtime handler
``wasmtime`` sends the pause sandbox AND every container of the pod to our shim. These tests
show what the issue asks: a wasm container's exit code and CRI log; a wasm container beside a
native sidecar, both stopped by StopPodSandbox; the wasm process inside the pod's network, IPC
and UTS namespaces; one shim process per pod; the crun-compatible annotations; StopContainer;
and that RemovePodSandbox leaves no shim, mount, cgroup, bundle or namespace.

Network rule: pods use the host network, except the one that needs its own network namespace,
which gets the fake CNI network of ``tests/cni`` (a dead-end eth0 at 127.0.0.2, installed by
the ``cri_bed`` fixture). Nothing here sends a packet anywhere.

The wasm image (``cri_wasm_image`` in tests/conftest.py) holds every C test program at
``/bin/<name>.wasm``; it is built and imported into containerd's ``k8s.io`` namespace once per
session. The annotation and StopContainer tests are in test_cri_wasm_policy.py.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from tests import cni
from tests.containerd import (
    CRI_NAMESPACE,
    TASK_PLUGIN_DIR,
    WASMTIME_HANDLER,
    PrivateContainerd,
)
from tests.cri import (
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
    CriClient,
    Pod,
    join_lines,
)
from tests.pause import build as native

CGROUP_ROOT = Path("/sys/fs/cgroup")
VARIANT = "module.wasm.image/variant"
HANDLER = "run.oci.handler"
SIGTERM_EXIT = 128 + 15
SIGKILL_EXIT = 128 + 9
TRAP_EXIT = 134

Bed = tuple[PrivateContainerd, CriClient]


# ------------------------------------------------------------------ pods


def wasm_pod(crictl: CriClient, name: str, **config: object) -> Pod:
    """A pod whose runtime handler is ``wasmtime``: its sandbox and containers go to our shim."""
    pod = crictl.run_pod(name, runtime_handler=WASMTIME_HANDLER, **config)
    assert crictl.pod_status(pod.id).status.state == SANDBOX_READY
    return pod


# ------------------------------------------------------------------ exit codes and CRI logs


def test_wasm_container_exit_code_and_cri_log(
    cri_bed: Bed, crictl: CriClient, cri_wasm_image: str
) -> None:
    containerd, wasm_image = cri_bed[0], cri_wasm_image
    pod = wasm_pod(crictl, "exits")
    hello = crictl.create_container(pod, "hello", wasm_image, args=["7"])
    crictl.start_container(hello)
    status = crictl.wait_exited(hello)
    assert (status.exit_code, status.reason) == (7, "Error"), status
    assert status.log_path == str(pod.log_directory / "hello" / "0.log")
    # read_log parses strictly: raw output instead of "<time> <stream> <P|F> <text>" fails.
    crictl.wait_for_log(hello, "argv[1]=7")
    entries = crictl.read_log(hello)
    assert join_lines(entries, "stdout") == [
        "hello from wasm",
        "argv[0]=/bin/hello.wasm",
        "argv[1]=7",
    ]
    assert all(entry.time.endswith("Z") and not entry.partial for entry in entries), entries

    # A trap: 134, and the trap message on the container's stderr, in the same log file.
    trap = crictl.create_container(pod, "trap", wasm_image, command=["/bin/trap.wasm"])
    crictl.start_container(trap)
    status = crictl.wait_exited(trap)
    assert status.exit_code == TRAP_EXIT, status
    stderr = crictl.wait_for_log(trap, "wasm trap", stream="stderr")
    assert crictl.wait_for_log(trap, "about to trap", stream="stdout") == ["about to trap"]
    assert any(line.startswith("wasm trap: ") for line in stderr), stderr

    ok = crictl.create_container(pod, "ok", wasm_image)
    crictl.start_container(ok)
    status = crictl.wait_exited(ok)
    assert (status.exit_code, status.reason) == (0, "Completed"), status

    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)
    assert_nothing_left(containerd, crictl, pod, [hello, trap, ok])


# ------------------------------------------------------------------ a wasm + native pod


def test_wasm_and_native_sidecar_share_the_pod_and_one_shim(
    cri_bed: Bed, crictl: CriClient, cri_wasm_image: str
) -> None:
    containerd, wasm_image = cri_bed[0], cri_wasm_image
    """Own network namespace (fake CNI), a sleeping wasm container and a native sidecar."""
    pod = wasm_pod(crictl, "mixed", host_network=False)
    status = crictl.pod_status(pod.id).status
    assert status.network.ip == cni.POD_IP, status.network
    pause = crictl.sandbox_pid(pod.id)
    netns_path = pod_netns_path(crictl, pod)

    wasm = crictl.create_container(pod, "wasm", wasm_image, command=["/bin/sleep.wasm"])
    side = crictl.create_container(pod, "side", native.SIDECAR_IMAGE)
    crictl.start_container(wasm)
    crictl.start_container(side)
    crictl.wait_for_log(wasm, "sleeping 3600")
    side_lines = crictl.wait_for_log(side, "netns net:")
    assert crictl.container_status(wasm).state == CONTAINER_RUNNING
    assert crictl.container_status(side).state == CONTAINER_RUNNING
    wasm_pid, side_pid = crictl.container_pid(wasm), crictl.container_pid(side)
    assert 0 not in (wasm_pid, side_pid) and len({pause, wasm_pid, side_pid}) == 3

    # The wasm process is in the pod's network, IPC and UTS namespaces; the network one is
    # the pod's own (CNI's), not the host's.
    for kind in ("net", "ipc", "uts"):
        assert ns_inode(wasm_pid, kind) == ns_inode(pause, kind), kind
    assert ns_inode(wasm_pid, "net") != ns_inode(os.getpid(), "net")
    assert os.stat(netns_path).st_ino == ns_inode(pause, "net")
    # The sidecar, started natively by runc, reports the same namespace from inside.
    assert f"netns net:[{ns_inode(pause, 'net')}]" in side_lines
    assert exe_of(side_pid) == native.SIDECAR_PATH
    assert exe_of(pause) == native.PAUSE_PATH

    # One shim process serves the whole pod: the sandbox, the wasm and the native container.
    daemons = shim_daemons(containerd)
    assert len(daemons) == 1, daemons
    (daemon,) = daemons
    for pid in (pause, wasm_pid, side_pid):
        assert daemon in ancestors(pid), (pid, daemon, ancestors(pid))
    addresses = {bundle_address(containerd, cid) for cid in (pod.id, wasm, side)}
    assert len(addresses) == 1, addresses
    for cid in (wasm, side):
        assert list(CGROUP_ROOT.glob(f"*/{CRI_NAMESPACE}/{cid}")), f"no cgroup for {cid}"
    # The wasm process sits in the cgroup containerd chose for it (the pod's parent + its id).
    cgroups_path = crictl.container_info(wasm)["runtimeSpec"]["linux"]["cgroupsPath"]
    own = {line.split(":", 2)[2] for line in Path(f"/proc/{wasm_pid}/cgroup").read_text().split()}
    assert cgroups_path in own, (cgroups_path, own)
    stderr = crictl.wait_for_log(side, "goes to stderr", stream="stderr")
    assert stderr == ["sidecar: this line goes to stderr"]
    pod_namespaces = {kind: ns_inode(pause, kind) for kind in ("net", "ipc", "uts")}
    for kind, inode in pod_namespaces.items():
        assert {pause, wasm_pid} <= set(processes_in(kind, inode)), kind

    # StopPodSandbox stops both containers (no grace period: SIGKILL) and the sandbox.
    crictl.stop_pod(pod.id)
    for cid in (wasm, side):
        exited = crictl.container_status(cid)
        assert (exited.state, exited.exit_code) == (CONTAINER_EXITED, SIGKILL_EXIT), exited
    assert crictl.pod_status(pod.id).status.state == SANDBOX_NOTREADY
    for pid in (pause, wasm_pid, side_pid):
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} survived StopPodSandbox"

    crictl.remove_pod(pod.id)
    assert_nothing_left(containerd, crictl, pod, [wasm, side], netns_path=netns_path)
    for kind, inode in pod_namespaces.items():
        assert processes_in(kind, inode) == [], f"processes left in the pod's {kind} namespace"


def test_two_pods_get_two_shims(cri_bed: Bed, crictl: CriClient, cri_wasm_image: str) -> None:
    containerd, wasm_image = cri_bed[0], cri_wasm_image
    """The grouping is per pod: a second pod's containers never reach the first pod's shim."""
    pods = [wasm_pod(crictl, f"pod{i}") for i in (1, 2)]
    cids = []
    for pod in pods:
        cid = crictl.create_container(pod, "sleep", wasm_image, command=["/bin/sleep.wasm"])
        crictl.start_container(cid)
        crictl.wait_for_log(cid, "sleeping")
        cids.append(cid)
    daemons = shim_daemons(containerd)
    assert len(daemons) == 2, daemons
    owners = [{d for d in daemons if d in ancestors(crictl.container_pid(cid))} for cid in cids]
    assert all(len(owner) == 1 for owner in owners) and owners[0] != owners[1], owners
    assert bundle_address(containerd, cids[0]) == bundle_address(containerd, pods[0].id)
    assert bundle_address(containerd, cids[0]) != bundle_address(containerd, cids[1])

    # Stopping one pod's container leaves the other pod's container running.
    crictl.stop_container(cids[0], timeout=5)
    assert crictl.wait_exited(cids[0]).exit_code == SIGTERM_EXIT
    assert crictl.container_status(cids[1]).state == CONTAINER_RUNNING
    for pod in pods:
        crictl.stop_pod(pod.id)
        crictl.remove_pod(pod.id)
    for pod in pods:
        assert_nothing_left(containerd, crictl, pod, cids)


def test_twenty_pods_leave_no_shim_behind(
    cri_bed: Bed, crictl: CriClient, cri_wasm_image: str
) -> None:
    """Kubelet's churn: 20 pods, each with a wasm container that runs and one that is still
    running at StopPodSandbox, created and removed one after another. Afterwards no shim
    process (daemon, spawner, container process), mount, socket, bundle or cgroup is left, on
    every containerd release (issue 11 saw 2.x keep every pod's shim running)."""
    containerd = cri_bed[0]
    for i in range(20):
        pod = wasm_pod(crictl, f"churn{i}")
        done = crictl.create_container(pod, "hello", cri_wasm_image)
        crictl.start_container(done)
        assert crictl.wait_exited(done).exit_code == 0
        busy = crictl.create_container(pod, "sleep", cri_wasm_image, command=["/bin/sleep.wasm"])
        crictl.start_container(busy)
        crictl.wait_for_log(busy, "sleeping")
        crictl.stop_pod(pod.id)
        crictl.remove_pod(pod.id)
        assert_nothing_left(containerd, crictl, pod, [done, busy])
    assert containerd.warm_runtime_pid() is not None, "the warm runtime is the one shim left"


# ------------------------------------------------------------------ helpers


def exe_of(pid: int, timeout: float = 10.0) -> str:
    """What ``pid`` runs once it has exec'd its program: runc returns from ``start`` when it
    has released its init, which may still be ``runc init`` for a moment on a busy machine
    (its exe then reads as ``/`` here)."""
    deadline = time.monotonic() + timeout
    while True:
        exe = os.readlink(f"/proc/{pid}/exe")
        if exe != "/" or time.monotonic() >= deadline:
            return exe
        time.sleep(0.02)


def ns_inode(pid: int, kind: str) -> int:
    """The inode number of ``/proc/<pid>/ns/<kind>``: equal numbers, same namespace."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def processes_in(kind: str, inode: int) -> list[int]:
    """Pids of the processes whose ``kind`` namespace has this inode number."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.stat(proc / "ns" / kind).st_ino == inode:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def pod_netns_path(crictl: CriClient, pod: Pod) -> str:
    """The network namespace file containerd made for the pod (from the sandbox's spec)."""
    namespaces = crictl.pod_info(pod.id)["runtimeSpec"]["linux"]["namespaces"]
    paths = [ns.get("path", "") for ns in namespaces if ns["type"] == "network"]
    assert paths and paths[0], f"the pod has no network namespace path: {namespaces}"
    return str(paths[0])


def _argv(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def shim_daemons(containerd: PrivateContainerd) -> list[int]:
    """The pod daemons of this containerd: ``-address <ours>`` in the command line, not its
    warm runtime (``warm``) and not forked from another such process (that excludes the
    spawners and container processes, which keep their daemon's command line, and the warm
    runtime's compile jobs). Sorted pids."""
    shims, warm = set(), set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = _argv(int(proc.name))
        except OSError:
            continue
        if ("-address", str(containerd.address)) in set(itertools.pairwise(argv)):
            shims.add(int(proc.name))
            if "warm" in argv:
                warm.add(int(proc.name))
    daemons = []
    for pid in shims - warm:
        try:
            if _ppid(pid) not in shims - warm:
                daemons.append(pid)
        except OSError:
            continue
    return sorted(daemons)


def ancestors(pid: int) -> list[int]:
    """``pid``'s parent, grandparent, ... up to init (empty if it is gone)."""
    chain = []
    try:
        while pid > 1:
            pid = _ppid(pid)
            chain.append(pid)
    except OSError:
        pass
    return chain


def bundle_address(containerd: PrivateContainerd, container_id: str) -> str:
    """The shim address containerd recorded in the task's bundle (``<bundle>/address``)."""
    bundle = containerd.state / TASK_PLUGIN_DIR / CRI_NAMESPACE / container_id
    return (bundle / "address").read_text().strip()


def assert_nothing_left(
    containerd: PrivateContainerd,
    crictl: CriClient,
    pod: Pod,
    ids: list[str],
    *,
    netns_path: str | None = None,
) -> None:
    """After RemovePodSandbox: no shim, mount, bundle, task, container, cgroup or network
    namespace of the pod or of these containers is left."""
    ids = [pod.id, *ids]
    leaks = containerd.wait_for_no_leaks(CRI_NAMESPACE)
    assert leaks == [], "\n".join(map(str, leaks)) + "\n" + containerd.log_tail(30)
    assert shim_daemons(containerd) == []
    tasks = set(containerd.ctr("tasks", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split())
    left = set(containerd.ctr("containers", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split())
    assert tasks.isdisjoint(ids) and left.isdisjoint(ids), (tasks, left)
    mounts = Path("/proc/self/mountinfo").read_text()
    for ident in ids:
        assert ident not in mounts, f"a mount of {ident} is left"
        bundle = containerd.state / TASK_PLUGIN_DIR / CRI_NAMESPACE / ident
        assert not bundle.exists(), f"bundle {bundle} is left"
    cgroups = [str(p) for i in ids for p in CGROUP_ROOT.glob(f"*/{CRI_NAMESPACE}/{i}")]
    assert cgroups == [], f"cgroups left: {cgroups}"
    if netns_path is not None:
        assert not Path(netns_path).exists(), f"network namespace {netns_path} is left"
        assert netns_path not in mounts, f"network namespace {netns_path} is still mounted"
    assert pod.id not in {p.id for p in crictl.list_pods()}
