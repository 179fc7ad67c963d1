"""A kubelet-like client of containerd's CRI plugin, for tests.

``CriClient`` speaks CRI v1 (``runtime.v1.RuntimeService`` / ``ImageService``, generated from
``proto/k8s/cri/v1/api.proto``) over gRPC to containerd's socket, and offers the few calls a
test needs with kubelet's habits built in: every pod gets a log directory (where containerd
writes each container's CRI log file), host network unless asked otherwise, and every call has
a deadline so a hung runtime fails the test instead of hanging it. Waiting for a state is
bounded too.

``cri_testbed()`` starts a CRI-enabled private containerd with the pause and sidecar images
imported and yields it with a client; ``cleanup()`` removes whatever pods a client created.

    with cri_testbed() as (containerd, cri):
        pod = cri.run_pod("demo")
        cid = cri.create_container(pod, "side", SIDECAR_IMAGE, env={"SIDECAR_EXIT": "3"})
        cri.start_container(cid)
        status = cri.wait_exited(cid)
        print(status.exit_code, cri.read_log(cid))

Errors: any failed RPC raises ``CriError`` carrying the gRPC code and containerd's message.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from shim.api.k8s.cri.v1 import api_pb2 as cri
from shim.api.k8s.cri.v1 import api_pb2_grpc as cri_grpc
from tests.containerd import CRI_NAMESPACE, PrivateContainerd
from tests.cri_log import LogLine, join_lines, parse_cri_log

CRI_API_VERSION = "v1"
DEFAULT_RPC_TIMEOUT = 60.0
DEFAULT_WAIT_TIMEOUT = 30.0
POLL_INTERVAL = 0.05

T = TypeVar("T")

# The log-format helpers live in tests/cri_log.py and are re-exported here for convenience.
__all__ = [
    "CriClient",
    "CriError",
    "CriTimeout",
    "LogLine",
    "Pod",
    "cri_testbed",
    "join_lines",
    "parse_cri_log",
]

# Re-exported so tests need not import the generated module for states.
CONTAINER_CREATED = cri.CONTAINER_CREATED
CONTAINER_RUNNING = cri.CONTAINER_RUNNING
CONTAINER_EXITED = cri.CONTAINER_EXITED
CONTAINER_UNKNOWN = cri.CONTAINER_UNKNOWN
SANDBOX_READY = cri.SANDBOX_READY
SANDBOX_NOTREADY = cri.SANDBOX_NOTREADY


class CriError(RuntimeError):
    """A CRI call failed. ``code`` is the gRPC status code, ``details`` containerd's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"CRI {method} failed: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


class CriTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited and what was last seen."""


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod sandbox this client started: its id, the config it was started with, its logs."""

    id: str
    config: cri.PodSandboxConfig
    runtime_handler: str
    log_directory: Path


class CriClient:
    """Drives containerd's CRI plugin like kubelet; see the module docstring.

    ``address``: containerd's gRPC socket. ``log_root``: where pods' log directories are made
    (default: a temporary directory removed by ``close``). ``timeout``: the deadline of each
    RPC.
    """

    def __init__(
        self,
        address: str | Path,
        *,
        log_root: Path | None = None,
        timeout: float = DEFAULT_RPC_TIMEOUT,
    ) -> None:
        self.address = str(address)
        self.timeout = timeout
        self._own_log_root = log_root is None
        self.log_root = log_root or Path(tempfile.mkdtemp(prefix="cri-logs-"))
        self._channel = grpc.insecure_channel(f"unix://{self.address}")
        self.runtime = cri_grpc.RuntimeServiceStub(self._channel)
        self.images = cri_grpc.ImageServiceStub(self._channel)
        self.pods: dict[str, Pod] = {}

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (and remove the log root if this client made it)."""
        self._channel.close()
        if self._own_log_root:
            shutil.rmtree(self.log_root, ignore_errors=True)

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        name = getattr(method, "_method", b"")
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            rpc_name = name.decode() if isinstance(name, bytes) else str(name)
            raise CriError(
                rpc_name.rsplit("/", 1)[-1] or type(request).__name__.removesuffix("Request"),
                exc.code(),  # type: ignore[attr-defined]
                exc.details() or "",  # type: ignore[attr-defined]
            ) from None

    # ------------------------------------------------------------------ runtime

    def version(self) -> cri.VersionResponse:
        return self._call(self.runtime.Version, cri.VersionRequest(version=CRI_API_VERSION))

    def wait_ready(self, timeout: float = DEFAULT_WAIT_TIMEOUT) -> cri.VersionResponse:
        """Poll Version until the CRI plugin answers (it starts after containerd's socket)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._call(self.runtime.Version, cri.VersionRequest(version="v1"), 5.0)
            except CriError as exc:
                if time.monotonic() >= deadline:
                    raise CriTimeout(f"CRI did not answer Version in {timeout}s: {exc}") from exc
            time.sleep(POLL_INTERVAL * 4)

    # ------------------------------------------------------------------ pods

    def pod_config(
        self,
        name: str,
        *,
        namespace: str = "default",
        uid: str | None = None,
        host_network: bool = True,
        hostname: str = "",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        cgroup_parent: str = "",
    ) -> cri.PodSandboxConfig:
        """A PodSandboxConfig as kubelet would send it, with a fresh log directory.

        ``host_network`` (the default) shares the node's network namespace: the only network
        these tests may use without CNI. ``cgroup_parent`` empty lets containerd choose.
        """
        uid = uid or uuid.uuid4().hex
        log_directory = self.log_root / f"{namespace}_{name}_{uid}"
        log_directory.mkdir(parents=True, exist_ok=True)
        network = cri.NODE if host_network else cri.POD
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            # A host-network pod shares the node's UTS namespace too: runc refuses a hostname.
            hostname=hostname or ("" if host_network else name),
            log_directory=str(log_directory),
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=network, pid=cri.CONTAINER)
                ),
            ),
        )

    def run_pod(
        self,
        name: str,
        *,
        runtime_handler: str = "",
        config: cri.PodSandboxConfig | None = None,
        **config_args: Any,
    ) -> Pod:
        """RunPodSandbox; ``runtime_handler`` "" is containerd's default (runc).

        Pass a ready ``config``, or keyword arguments for ``pod_config``. The pod is
        remembered for ``cleanup``.
        """
        config = config or self.pod_config(name, **config_args)
        reply = self._call(
            self.runtime.RunPodSandbox,
            cri.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler),
        )
        pod = Pod(reply.pod_sandbox_id, config, runtime_handler, Path(config.log_directory))
        self.pods[pod.id] = pod
        return pod

    def pod_status(self, pod_id: str, *, verbose: bool = False) -> cri.PodSandboxStatusResponse:
        return self._call(
            self.runtime.PodSandboxStatus,
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose),
        )

    def pod_info(self, pod_id: str) -> dict[str, Any]:
        """containerd's verbose ``info`` JSON for a pod (``pid``, ``runtimeSpec``, ...)."""
        return json.loads(self.pod_status(pod_id, verbose=True).info["info"])

    def sandbox_pid(self, pod_id: str) -> int:
        """The host pid of the pod's sandbox (pause) process, as containerd reports it."""
        return int(self.pod_info(pod_id)["pid"])

    def list_pods(self, *, state: int | None = None) -> list[cri.PodSandbox]:
        flt = cri.PodSandboxFilter()
        if state is not None:
            flt.state.state = state
        return list(
            self._call(self.runtime.ListPodSandbox, cri.ListPodSandboxRequest(filter=flt)).items
        )

    def stop_pod(self, pod_id: str) -> None:
        self._call(self.runtime.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        self._call(
            self.runtime.RemovePodSandbox, cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        )
        self.pods.pop(pod_id, None)

    # ------------------------------------------------------------------ containers

    def create_container(
        self,
        pod: Pod,
        name: str,
        image: str,
        *,
        command: Iterable[str] = (),
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        working_dir: str = "",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        mounts: Iterable[cri.Mount] = (),
        log_path: str | None = None,
        attempt: int = 0,
        linux: cri.LinuxContainerConfig | None = None,
    ) -> str:
        """CreateContainer in ``pod``; returns the container id.

        ``command``/``args`` replace the image's Entrypoint/Cmd as a pod spec's would. The log
        file is ``<pod log dir>/<name>/<attempt>.log`` (kubelet's layout) unless ``log_path``
        (relative to the pod's log directory) says otherwise. ``linux``: resources and the
        security context, as kubelet fills them (default: empty, as for a bare pod spec).
        """
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=attempt),
            image=cri.ImageSpec(image=image),
            command=list(command),
            args=list(args),
            working_dir=working_dir,
            envs=[cri.KeyValue(key=k, value=v.encode()) for k, v in (env or {}).items()],
            mounts=list(mounts),
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            log_path=log_path or f"{name}/{attempt}.log",
            linux=linux or cri.LinuxContainerConfig(),
        )
        (pod.log_directory / Path(config.log_path).parent).mkdir(parents=True, exist_ok=True)
        reply = self._call(
            self.runtime.CreateContainer,
            cri.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
        )
        return reply.container_id

    def start_container(self, container_id: str, timeout: float | None = None) -> None:
        """StartContainer; ``timeout``: its deadline (kubelet's is 2 minutes), else the
        client's."""
        self._call(
            self.runtime.StartContainer,
            cri.StartContainerRequest(container_id=container_id),
            timeout,
        )

    def stop_container(self, container_id: str, timeout: int = 10) -> None:
        """StopContainer: the stop signal, then SIGKILL after ``timeout`` seconds."""
        self._call(
            self.runtime.StopContainer,
            cri.StopContainerRequest(container_id=container_id, timeout=timeout),
            timeout=self.timeout + timeout,
        )

    def remove_container(self, container_id: str) -> None:
        self._call(
            self.runtime.RemoveContainer, cri.RemoveContainerRequest(container_id=container_id)
        )

    def container_status(self, container_id: str) -> cri.ContainerStatus:
        return self._call(
            self.runtime.ContainerStatus, cri.ContainerStatusRequest(container_id=container_id)
        ).status

    def container_info(self, container_id: str) -> dict[str, Any]:
        """containerd's verbose ``info`` JSON for a container (``pid``, ``runtimeSpec``...)."""
        reply = self._call(
            self.runtime.ContainerStatus,
            cri.ContainerStatusRequest(container_id=container_id, verbose=True),
        )
        return json.loads(reply.info["info"])

    def container_pid(self, container_id: str) -> int:
        """The host pid of the container's process as containerd reports it (0 if none)."""
        return int(self.container_info(container_id).get("pid", 0))

    def list_containers(self, *, pod_id: str = "", state: int | None = None) -> list[cri.Container]:
        flt = cri.ContainerFilter(pod_sandbox_id=pod_id)
        if state is not None:
            flt.state.state = state
        reply = self._call(self.runtime.ListContainers, cri.ListContainersRequest(filter=flt))
        return list(reply.containers)

    def wait_container_state(
        self, container_id: str, state: int, timeout: float = DEFAULT_WAIT_TIMEOUT
    ) -> cri.ContainerStatus:
        """Poll ContainerStatus until the container is in ``state``; raise CriTimeout after."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id)
            if status.state == state:
                return status
            if time.monotonic() >= deadline:
                raise CriTimeout(
                    f"container {container_id} not {cri.ContainerState.Name(state)} after "
                    f"{timeout}s; last: {cri.ContainerState.Name(status.state)} "
                    f"reason={status.reason!r} message={status.message!r}"
                )
            time.sleep(POLL_INTERVAL)

    def wait_exited(
        self, container_id: str, timeout: float = DEFAULT_WAIT_TIMEOUT
    ) -> cri.ContainerStatus:
        return self.wait_container_state(container_id, cri.CONTAINER_EXITED, timeout)

    # ------------------------------------------------------------------ logs

    def log_file(self, container_id: str) -> Path:
        """The container's CRI log file on the host (from ContainerStatus.log_path)."""
        return Path(self.container_status(container_id).log_path)

    def read_log(self, container_id: str) -> list[LogLine]:
        """The container's CRI log entries so far (empty if the file is not there yet)."""
        try:
            text = self.log_file(container_id).read_text(errors="replace")
        except FileNotFoundError:
            return []
        return parse_cri_log(text)

    def wait_for_log(
        self,
        container_id: str,
        predicate: Callable[[list[str]], bool] | str,
        *,
        stream: str | None = None,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> list[str]:
        """Poll the log until ``predicate(lines)`` holds (a str: some line contains it).

        containerd copies output from the FIFOs asynchronously, so even after an exit the
        last lines may land a moment later; this waits for them, bounded. Returns the lines.
        """
        if isinstance(predicate, str):
            needle = predicate

            def predicate(lines: list[str]) -> bool:
                return any(needle in line for line in lines)

        deadline = time.monotonic() + timeout
        while True:
            lines = join_lines(self.read_log(container_id), stream)
            if predicate(lines):
                return lines
            if time.monotonic() >= deadline:
                raise CriTimeout(f"log of {container_id} after {timeout}s: {lines!r}")
            time.sleep(POLL_INTERVAL)

    # ------------------------------------------------------------------ images

    def list_images(self) -> list[cri.Image]:
        return list(self._call(self.images.ListImages, cri.ListImagesRequest()).images)

    def image_status(self, ref: str) -> cri.Image | None:
        """The image as the CRI plugin sees it, or None when it does not have it."""
        reply = self._call(
            self.images.ImageStatus, cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))
        )
        return reply.image if reply.HasField("image") else None

    def pull_image(self, ref: str, *, pod: Pod | None = None) -> str:
        """PullImage as kubelet sends it (with the pod's sandbox config, whose runtime handler
        containerd 2.x may pick a platform and snapshotter by); the image id it reports."""
        request = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
        if pod is not None:
            request.sandbox_config.CopyFrom(pod.config)
            request.image.runtime_handler = pod.runtime_handler
        return self._call(self.images.PullImage, request).image_ref

    def wait_image(self, ref: str, timeout: float = DEFAULT_WAIT_TIMEOUT) -> cri.Image:
        """Wait until CRI sees an image imported with ctr (it learns of it from events)."""
        deadline = time.monotonic() + timeout
        while True:
            image = self.image_status(ref)
            if image is not None:
                return image
            if time.monotonic() >= deadline:
                raise CriTimeout(f"CRI does not see image {ref} after {timeout}s")
            time.sleep(POLL_INTERVAL)

    # ------------------------------------------------------------------ teardown

    def cleanup(self) -> list[str]:
        """Stop and remove every pod this client started that is still there (kubelet's GC).

        Returns the ids it had to remove, so a test can assert that it cleaned up itself.
        """
        removed = []
        for pod_id in list(self.pods):
            with contextlib.suppress(CriError):
                self.stop_pod(pod_id)
            with contextlib.suppress(CriError):
                self.remove_pod(pod_id)
            self.pods.pop(pod_id, None)
            removed.append(pod_id)
        return removed


@contextlib.contextmanager
def cri_testbed(
    base: Path | None = None, **containerd_args: Any
) -> Iterator[tuple[PrivateContainerd, CriClient]]:
    """A CRI-enabled PrivateContainerd with the pause and sidecar images imported, and a client.

    Keyword arguments go to PrivateContainerd (``cri=True`` is implied). Pod log directories
    live under the containerd's base directory. On exit, pods left behind are removed, then
    containerd is stopped (its ``stop_report`` lists anything else it had to clean).
    """
    from tests.pause.build import pause_image, sidecar_image

    containerd = PrivateContainerd(base, cri=True, **containerd_args)
    images = [pause_image(), sidecar_image()]
    with containerd:
        for image in images:
            archive = image.write(containerd.base / "images" / f"{image.manifest_digest[7:]}.tar")
            containerd.ctr("image", "import", str(archive), namespace=CRI_NAMESPACE)
        client = CriClient(containerd.address, log_root=containerd.base / "pods")
        try:
            client.wait_ready()
            for image in images:
                client.wait_image(image.ref)
            yield containerd, client
        finally:
            client.cleanup()
            client.close()
