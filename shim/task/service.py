"""The `containerd.task.v2.Task` ttrpc service: wire types in, plain calls out.

This is the only module (with shim/events.py) that touches the task protobufs, and the only
one that reads Create's runtime options Any. Each handler unpacks its request, calls
shim/task/tasks.py, and packs the answer; errors pass through as shim.errors classes, which
the ttrpc server converts to status codes. Unsupported RPCs are
UNIMPLEMENTED, everywhere with the same wording, so containerd (and a user reading ctr's
output) can tell "not supported" from "failed".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from shim import __version__
from shim.api.containerd.events import task_pb2 as events_pb2
from shim.api.containerd.task.v2 import shim_pb2 as pb
from shim.api.containerd.types import mount_pb2
from shim.api.containerd.types.task import task_pb2 as types_pb2
from shim.errors import InvalidArgument, Unimplemented
from shim.io.fds import read_regular
from shim.io.stdio import StdioConfig
from shim.logs import current_container
from shim.oci.mounts import MountRequest
from shim.task.container import Container, CreateConfig
from shim.task.execs import ExecProcess
from shim.task.native import NativeOptions, options_from_toml
from shim.task.states import State
from shim.task.tasks import Tasks

log = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
OPTIONS_FILE_LIMIT = 1 << 20  # bytes of a runtime options file (CRI's config_path)

_STATUS = {
    State.CREATED: types_pb2.CREATED,
    State.STARTING: types_pb2.CREATED,
    State.RUNNING: types_pb2.RUNNING,
    State.PAUSING: types_pb2.PAUSING,
    State.PAUSED: types_pb2.PAUSED,
    State.RESUMING: types_pb2.PAUSED,  # frozen until the thaw is done
    State.STOPPED: types_pb2.STOPPED,
    State.DELETING: types_pb2.STOPPED,
    State.DELETED: types_pb2.STOPPED,
}


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if ns:
        ts.FromNanoseconds(ns)
    return ts


def pack_any(msg: Message) -> any_pb2.Any:
    """An Any whose type_url is the bare proto name, as containerd's typeurl registers them."""
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


# containerd's typeurl name for specs.LinuxResources, which it marshals as JSON.
LINUX_RESOURCES = "opencontainers/runtime-spec/1/LinuxResources"


def linux_resources(resources: any_pb2.Any) -> dict[str, Any]:
    """Update's `resources` Any: the OCI linux.resources as its JSON object. Anything else
    (Windows resources, an empty Any) is refused, naming what came."""
    if not resources.type_url.endswith(LINUX_RESOURCES):
        raise InvalidArgument(
            f"update: resources of type {resources.type_url or '(none)'!r} are not "
            "linux resources (OCI LinuxResources)"
        )
    try:
        value = json.loads(resources.value)
    except ValueError as e:
        raise InvalidArgument(f"update: the linux resources are not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidArgument("update: the linux resources are not a JSON object")
    return value


def _unsupported(what: str) -> Unimplemented:
    return Unimplemented(f"{what} is not supported by the wasmtime shim (UNIMPLEMENTED)")


RpcMethod = Callable[[Any, Any], Awaitable[Message]]


def native_options(options: any_pb2.Any) -> NativeOptions:
    """Create's `options` Any. containerd's CRI passes a non-runc shim's options table as
    runtimeoptions.v1.Options: the raw TOML in config_body (1.7+) or a file in config_path.
    Anything else is not ours to read."""
    if not options.type_url.endswith("runtimeoptions.v1.Options"):
        if options.type_url:
            log.debug("ignoring runtime options of type %s", options.type_url)
        return NativeOptions()
    from shim.api.runtimeoptions.v1 import api_pb2

    opts = api_pb2.Options.FromString(options.value)
    text = ""
    if opts.config_body:
        text = opts.config_body.decode("utf-8", "replace")
    elif opts.config_path:
        # Read on the event loop: a small regular file or a refusal, never a wait (fds.py).
        data = read_regular(opts.config_path, "runtime options file", OPTIONS_FILE_LIMIT)
        text = data.decode("utf-8", "replace")
    return options_from_toml(text)


class TaskService:
    """Adapts ttrpc requests to `Tasks`. `handlers()` is the server's dispatch table."""

    def __init__(
        self,
        tasks: Tasks,
        namespace: str,
        request_shutdown: Callable[[bool], None],
    ) -> None:
        self.tasks = tasks
        self.namespace = namespace
        self.request_shutdown = request_shutdown

    def handlers(self) -> dict[str, tuple[RpcMethod, type[Message]]]:
        table: dict[str, tuple[RpcMethod, type[Message]]] = {}
        for name in pb.DESCRIPTOR.services_by_name["Task"].methods_by_name:
            method = pb.DESCRIPTOR.services_by_name["Task"].methods_by_name[name]
            request_type = getattr(pb, method.input_type.name)
            table[name] = (self._wrap(getattr(self, name)), request_type)
        return table

    @staticmethod
    def _wrap(func: RpcMethod) -> RpcMethod:
        async def handler(request: Any, ctx: Any) -> Message:
            current_container.set(getattr(request, "id", ""))
            return await func(request, ctx)

        return handler

    # ------------------------------------------------------------------ lifecycle

    async def Create(self, r: pb.CreateTaskRequest, ctx: Any) -> pb.CreateTaskResponse:
        if r.checkpoint or r.parent_checkpoint:
            raise _unsupported("checkpoint/restore")
        cfg = CreateConfig(
            id=r.id,
            bundle=r.bundle,
            rootfs=tuple(
                MountRequest(type=m.type, source=m.source, options=tuple(m.options))
                for m in r.rootfs
            ),
            stdio=StdioConfig(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr, terminal=r.terminal),
            namespace=self.namespace,
            native=native_options(r.options),
        )
        c = await self.tasks.create(cfg)
        return pb.CreateTaskResponse(pid=c.pid)

    async def Start(self, r: pb.StartRequest, ctx: Any) -> pb.StartResponse:
        return pb.StartResponse(pid=await self.tasks.start(r.id, r.exec_id))

    async def Wait(self, r: pb.WaitRequest, ctx: Any) -> pb.WaitResponse:
        info = await self.tasks.wait(r.id, r.exec_id)
        return pb.WaitResponse(exit_status=info.exit_status, exited_at=timestamp(info.exited_at_ns))

    async def Kill(self, r: pb.KillRequest, ctx: Any) -> empty_pb2.Empty:
        await self.tasks.kill(r.id, r.exec_id, r.signal, r.all)
        return empty_pb2.Empty()

    async def Delete(self, r: pb.DeleteRequest, ctx: Any) -> pb.DeleteResponse:
        info = await self.tasks.delete(r.id, r.exec_id)
        return pb.DeleteResponse(
            pid=info.pid, exit_status=info.exit_status, exited_at=timestamp(info.exited_at_ns)
        )

    async def Shutdown(self, r: pb.ShutdownRequest, ctx: Any) -> empty_pb2.Empty:
        if r.now:
            self.request_shutdown(True)
        else:
            self.tasks.exit_when_idle(lambda: self.request_shutdown(False))
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ queries

    async def State(self, r: pb.StateRequest, ctx: Any) -> pb.StateResponse:
        c = self.tasks.get(r.id)
        p: Container | ExecProcess = self.tasks.get_exec(r.id, r.exec_id) if r.exec_id else c
        return pb.StateResponse(
            id=p.id,
            bundle=c.bundle,
            pid=p.pid,
            status=_STATUS[p.state],
            stdin=p.stdio.stdin,
            stdout=p.stdio.stdout,
            stderr=p.stdio.stderr,
            terminal=p.stdio.terminal,
            exit_status=p.exit_status,
            exited_at=timestamp(p.exited_at_ns),
            exec_id=r.exec_id,
        )

    async def Connect(self, r: pb.ConnectRequest, ctx: Any) -> pb.ConnectResponse:
        c = self.tasks.containers.get(r.id)
        task_pid = c.pid if c is not None and c.state is not State.CREATED else 0
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=task_pid, version=__version__)

    async def Pids(self, r: pb.PidsRequest, ctx: Any) -> pb.PidsResponse:
        return pb.PidsResponse(
            processes=[types_pb2.ProcessInfo(pid=p) for p in self.tasks.pids(r.id)]
        )

    async def Stats(self, r: pb.StatsRequest, ctx: Any) -> pb.StatsResponse:
        cgroup = self.tasks.cgroup_of(r.id)
        return pb.StatsResponse(stats=pack_any(await asyncio.to_thread(cgroup.metrics)))

    async def CloseIO(self, r: pb.CloseIORequest, ctx: Any) -> empty_pb2.Empty:
        self.tasks.close_io(r.id, r.exec_id, r.stdin)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ freezer and limits

    async def Pause(self, r: pb.PauseRequest, ctx: Any) -> empty_pb2.Empty:
        await self.tasks.pause(r.id)
        return empty_pb2.Empty()

    async def Resume(self, r: pb.ResumeRequest, ctx: Any) -> empty_pb2.Empty:
        await self.tasks.resume(r.id)
        return empty_pb2.Empty()

    async def Update(self, r: pb.UpdateTaskRequest, ctx: Any) -> empty_pb2.Empty:
        await self.tasks.update(r.id, linux_resources(r.resources))
        return empty_pb2.Empty()

    async def Exec(self, r: pb.ExecProcessRequest, ctx: Any) -> empty_pb2.Empty:
        stdio = StdioConfig(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr, terminal=r.terminal)
        await self.tasks.exec_add(r.id, r.exec_id, stdio, r.spec.value)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ not supported (yet)

    async def ResizePty(self, r: pb.ResizePtyRequest, ctx: Any) -> empty_pb2.Empty:
        self.tasks.resize_pty(r.id, r.exec_id, r.width, r.height)
        return empty_pb2.Empty()

    async def Checkpoint(self, r: pb.CheckpointTaskRequest, ctx: Any) -> empty_pb2.Empty:
        raise Unimplemented(
            "checkpoint is not supported by the wasmtime shim (UNIMPLEMENTED): a wasm guest's "
            "state (linear memory, stack, WASI handles) lives inside the engine, where CRIU "
            "cannot save and restore it, and wasmtime has no snapshot of a running instance"
        )


class ProtoEvents:
    """The EventSink that turns container changes into containerd.events messages."""

    def __init__(self, publish: Callable[[str, Message], None]) -> None:
        self.publish = publish

    def task_create(self, c: Container) -> None:
        self.publish(
            "/tasks/create",
            events_pb2.TaskCreate(
                container_id=c.id,
                bundle=c.bundle,
                rootfs=[
                    mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options))
                    for m in c.rootfs_mounts
                ],
                io=events_pb2.TaskIO(
                    stdin=c.stdio.stdin,
                    stdout=c.stdio.stdout,
                    stderr=c.stdio.stderr,
                    terminal=c.stdio.terminal,
                ),
                pid=c.pid,
            ),
        )

    def task_oom(self, c: Container) -> None:
        self.publish("/tasks/oom", events_pb2.TaskOOM(container_id=c.id))

    def task_start(self, c: Container) -> None:
        self.publish("/tasks/start", events_pb2.TaskStart(container_id=c.id, pid=c.pid))

    def task_paused(self, c: Container) -> None:
        self.publish("/tasks/paused", events_pb2.TaskPaused(container_id=c.id))

    def task_resumed(self, c: Container) -> None:
        self.publish("/tasks/resumed", events_pb2.TaskResumed(container_id=c.id))

    def task_exec_added(self, c: Container, e: ExecProcess) -> None:
        self.publish("/tasks/exec-added", events_pb2.TaskExecAdded(container_id=c.id, exec_id=e.id))

    def task_exec_started(self, c: Container, e: ExecProcess) -> None:
        self.publish(
            "/tasks/exec-started",
            events_pb2.TaskExecStarted(container_id=c.id, exec_id=e.id, pid=e.pid),
        )

    def task_exec_exit(self, c: Container, e: ExecProcess) -> None:
        self._exit(c.id, e.id, e.pid, e.exit_status, e.exited_at_ns)

    def task_exit(self, c: Container) -> None:
        self._exit(c.id, c.id, c.pid, c.exit_status, c.exited_at_ns)

    def _exit(self, container_id: str, id_: str, pid: int, status: int, at_ns: int) -> None:
        """TaskExit; ``id_`` is the container's own id for its init, else the exec id."""
        self.publish(
            "/tasks/exit",
            events_pb2.TaskExit(
                container_id=container_id,
                id=id_,
                pid=pid,
                exit_status=status,
                exited_at=timestamp(at_ns),
            ),
        )

    def task_delete(self, c: Container) -> None:
        self.publish(
            "/tasks/delete",
            events_pb2.TaskDelete(
                container_id=c.id,
                id=c.id,
                pid=c.pid,
                exit_status=c.exit_status,
                exited_at=timestamp(c.exited_at_ns),
            ),
        )
