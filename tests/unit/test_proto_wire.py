"""Our generated protobuf modules speak containerd's wire format.

Two kinds of evidence:

* encodings checked against bytes worked out by hand from the protobuf encoding rules
  (tag = field_number << 3 | wire_type; varints little-endian in 7-bit groups), so a wrong
  field number or type changes the bytes and fails the test;
* a structural comparison with containerd's own .proto sources as Debian installs them
  (containerd 1.6.20): every message, field name, field number, field type, enum value and
  service method that containerd declares must exist identically in ours. The sources are
  parsed with a small regex-based reader that lives only here; those tests skip when the
  Debian package is not installed.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf import any_pb2, descriptor_pool, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from shim.api.containerd.events import task_pb2 as events_pb2
from shim.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from shim.api.containerd.task.v2 import shim_pb2
from shim.api.containerd.types import mount_pb2
from shim.api.containerd.types.task import task_pb2 as types_pb2
from shim.api.google.rpc import status_pb2
from shim.api.ttrpc import request_pb2
from tests.prereq import require

API_DIR = Path(__file__).resolve().parents[2] / "shim" / "api"
GOCODE = Path("/usr/share/gocode/src/github.com/containerd")
NS_KEY = b"containerd-namespace-ttrpc"
TASK = "containerd.task.v2.Task"


def _import_all_generated() -> None:
    """Load every generated module so the default pool knows every type we define."""
    for path in sorted(API_DIR.rglob("*_pb2.py")):
        rel = path.relative_to(API_DIR.parent.parent).with_suffix("")
        importlib.import_module(".".join(rel.parts))


_import_all_generated()
POOL = descriptor_pool.Default()


# --- hand-computed encodings ---------------------------------------------------------------


def test_ttrpc_request_bytes() -> None:
    req = request_pb2.Request(
        service=TASK,
        method="Create",
        payload=b"\x0a\x01x",
        timeout_nano=1_000_000_000,
        metadata=[request_pb2.KeyValue(key=NS_KEY.decode(), value="default")],
    )
    expected = (
        b"\x0a\x17" + TASK.encode()  # 1: service, 23 bytes
        + b"\x12\x06Create"  # 2: method
        + b"\x1a\x03\x0a\x01x"  # 3: payload
        + b"\x20\x80\x94\xeb\xdc\x03"  # 4: timeout_nano = 10^9 as a varint
        + b"\x2a\x25"  # 5: one KeyValue of 37 bytes
        + b"\x0a\x1a" + NS_KEY  # key, 26 bytes
        + b"\x12\x07default"  # value
    )  # fmt: skip
    assert req.SerializeToString() == expected
    assert request_pb2.Request.FromString(expected) == req


def test_ttrpc_response_error_status_not_found() -> None:
    resp = request_pb2.Response(status=status_pb2.Status(code=5, message="not found"))
    status = b"\x08\x05" + b"\x12\x09not found"
    assert resp.SerializeToString() == b"\x0a\x0d" + status  # 2 + 2 + 9 bytes
    assert request_pb2.Response.FromString(b"\x0a\x0d" + status).status.code == 5


def test_ttrpc_response_ok_status_is_an_empty_submessage() -> None:
    resp = request_pb2.Response(status=status_pb2.Status(), payload=b"\x08\x2a")
    assert resp.SerializeToString() == b"\x0a\x00" + b"\x12\x02\x08\x2a"


def test_status_details_are_repeated_any() -> None:
    status = status_pb2.Status(code=3, details=[any_pb2.Any(type_url="t", value=b"v")])
    detail = b"\x0a\x01t" + b"\x12\x01v"
    assert status.SerializeToString() == b"\x08\x03" + b"\x1a\x06" + detail


def test_create_task_request_with_mount_and_options() -> None:
    req = shim_pb2.CreateTaskRequest(
        id="c1",
        bundle="/b",
        rootfs=[mount_pb2.Mount(type="bind", source="/src", options=["rbind", "ro"])],
        stdout="/o",
        options=any_pb2.Any(type_url="x"),
    )
    mount = b"\x0a\x04bind" + b"\x12\x04/src" + b"\x22\x05rbind" + b"\x22\x02ro"
    expected = (
        b"\x0a\x02c1"  # 1: id
        + b"\x12\x02/b"  # 2: bundle
        + b"\x1a\x17" + mount  # 3: rootfs[0], 23 bytes
        + b"\x32\x02/o"  # 6: stdout
        + b"\x52\x03\x0a\x01x"  # 10: options (Any with type_url only)
    )  # fmt: skip
    assert req.SerializeToString() == expected
    assert shim_pb2.CreateTaskRequest.FromString(expected) == req


def test_task_exit_with_timestamp() -> None:
    event = events_pb2.TaskExit(
        container_id="c1",
        id="c1",
        pid=42,
        exit_status=137,
        exited_at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5),
    )
    stamp = b"\x08\x80\xe2\xcf\xaa\x06" + b"\x10\x05"  # seconds, nanos
    expected = (
        b"\x0a\x02c1"  # 1: container_id
        + b"\x12\x02c1"  # 2: id
        + b"\x18\x2a"  # 3: pid 42
        + b"\x20\x89\x01"  # 4: exit_status 137 (two-byte varint)
        + b"\x2a\x08" + stamp  # 5: exited_at
    )  # fmt: skip
    assert event.SerializeToString() == expected


def test_state_response_status_enum_and_exec_id() -> None:
    resp = shim_pb2.StateResponse(id="c", status=types_pb2.RUNNING, exec_id="e")
    assert resp.SerializeToString() == b"\x0a\x01c" + b"\x20\x02" + b"\x5a\x01e"


def test_update_task_annotations_map_entry() -> None:
    req = shim_pb2.UpdateTaskRequest(id="c", annotations={"k": "v"})
    assert req.SerializeToString() == b"\x0a\x01c" + b"\x1a\x06\x0a\x01k\x12\x01v"


def test_forward_request_envelope() -> None:
    env = ttrpc_events_pb2.Envelope(
        timestamp=timestamp_pb2.Timestamp(seconds=1),
        namespace="default",
        topic="/tasks/oom",
        event=any_pb2.Any(type_url="containerd.events.TaskOOM", value=b"\x0a\x01c"),
    )
    any_bytes = b"\x0a\x19containerd.events.TaskOOM" + b"\x12\x03\x0a\x01c"
    inner = (
        b"\x0a\x02\x08\x01"
        + b"\x12\x07default"
        + b"\x1a\x0a/tasks/oom"
        + b"\x22\x20" + any_bytes
    )  # fmt: skip
    req = ttrpc_events_pb2.ForwardRequest(envelope=env)
    assert req.SerializeToString() == b"\x0a" + bytes([len(inner)]) + inner


def test_task_service_method_paths() -> None:
    """The dispatch keys containerd calls; independent of the Debian sources."""
    service = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    assert service.full_name == TASK
    expected = {
        "State": ("StateRequest", "StateResponse"),
        "Create": ("CreateTaskRequest", "CreateTaskResponse"),
        "Start": ("StartRequest", "StartResponse"),
        "Delete": ("DeleteRequest", "DeleteResponse"),
        "Pids": ("PidsRequest", "PidsResponse"),
        "Pause": ("PauseRequest", "google.protobuf.Empty"),
        "Resume": ("ResumeRequest", "google.protobuf.Empty"),
        "Checkpoint": ("CheckpointTaskRequest", "google.protobuf.Empty"),
        "Kill": ("KillRequest", "google.protobuf.Empty"),
        "Exec": ("ExecProcessRequest", "google.protobuf.Empty"),
        "ResizePty": ("ResizePtyRequest", "google.protobuf.Empty"),
        "CloseIO": ("CloseIORequest", "google.protobuf.Empty"),
        "Update": ("UpdateTaskRequest", "google.protobuf.Empty"),
        "Wait": ("WaitRequest", "WaitResponse"),
        "Stats": ("StatsRequest", "StatsResponse"),
        "Connect": ("ConnectRequest", "ConnectResponse"),
        "Shutdown": ("ShutdownRequest", "google.protobuf.Empty"),
    }
    got = {
        m.name: (_short(m.input_type.full_name), _short(m.output_type.full_name))
        for m in service.methods
    }
    assert got == expected


def _short(full_name: str) -> str:
    return full_name.removeprefix("containerd.task.v2.")


# --- comparison with containerd's own .proto sources ---------------------------------------

SCALARS = {
    "double": FieldDescriptor.TYPE_DOUBLE,
    "float": FieldDescriptor.TYPE_FLOAT,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "int32": FieldDescriptor.TYPE_INT32,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "fixed64": FieldDescriptor.TYPE_FIXED64,
    "fixed32": FieldDescriptor.TYPE_FIXED32,
    "sfixed64": FieldDescriptor.TYPE_SFIXED64,
    "sfixed32": FieldDescriptor.TYPE_SFIXED32,
    "sint64": FieldDescriptor.TYPE_SINT64,
    "sint32": FieldDescriptor.TYPE_SINT32,
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
}

# containerd's sources we mirror, relative to GOCODE.
UPSTREAM = [
    "containerd/runtime/v2/task/shim.proto",
    "containerd/api/types/mount.proto",
    "containerd/api/types/metrics.proto",
    "containerd/api/types/descriptor.proto",
    "containerd/api/types/task/task.proto",
    "containerd/api/events/task.proto",
    "containerd/api/services/ttrpc/events/v1/events.proto",
    "containerd/api/services/events/v1/events.proto",
    "containerd/api/services/containers/v1/containers.proto",
    "containerd/api/services/images/v1/images.proto",
    "containerd/api/services/content/v1/content.proto",
    "containerd/pkg/runtimeoptions/v1/api.proto",
    "cgroups/stats/v1/metrics.proto",
    "cgroups/v2/stats/metrics.proto",
]


@dataclass
class Block:
    """One message, enum or service of a parsed .proto: its statements, nested blocks aside."""

    kind: str
    full_name: str
    statements: list[str]
    scope: str  # where relative type names are looked up first


@dataclass
class ProtoFile:
    package: str
    blocks: dict[str, Block] = field(default_factory=dict)


_BLOCK_START = re.compile(r"\b(message|enum|service)\s+(\w+)\s*\{")


def _clean(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r"\[[^\]]*\]", " ", text)  # field options such as [(gogoproto.nullable) = ...]


def _parse_blocks(text: str, prefix: str, out: dict[str, Block]) -> str:
    """Record every block of text in out; return text with the blocks cut out."""
    rest, pos = [], 0
    while match := _BLOCK_START.search(text, pos):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        kind, name = match.groups()
        full = f"{prefix}.{name}"
        direct = _parse_blocks(text[match.end() : end - 1], full, out)
        statements = [s.strip() for s in direct.split(";") if s.strip()]
        out[full] = Block(kind, full, statements, full if kind == "message" else prefix)
        rest.append(text[pos : match.start()])
        pos = end
    rest.append(text[pos:])
    return "".join(rest)


def parse_proto(path: Path) -> ProtoFile:
    text = _clean(path.read_text())
    package = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M)
    assert package, path
    parsed = ProtoFile(package.group(1))
    _parse_blocks(text, package.group(1), parsed.blocks)
    return parsed


def _resolve(name: str, scope: str, known: dict[str, Block]) -> str:
    """Resolve a type name the way protoc does: innermost scope outwards."""
    name = name.lstrip(".")
    parts = scope.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join([*parts[:i], name])
        if candidate in known:
            return candidate
    return name  # fully qualified already (another file's type)


_FIELD = re.compile(
    r"^(?:(repeated|optional)\s+)?(map\s*<\s*\w+\s*,\s*[\w.]+\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)$"
)
_RPC = re.compile(
    r"^rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)"
)


def _is_repeated(fd: FieldDescriptor) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def _type_problem(fd: FieldDescriptor, type_: str, scope: str, known: dict[str, Block]) -> str:
    """Describe how our field's type differs from the upstream declaration, or return ''."""
    where = fd.full_name
    if map_types := re.fullmatch(r"map\s*<\s*(\w+)\s*,\s*([\w.]+)\s*>", type_):
        entry = fd.message_type
        if entry is None or not entry.GetOptions().map_entry:
            return f"{where}: upstream is a map, ours is not"
        key, value = map_types.groups()
        return _type_problem(entry.fields_by_name["key"], key, scope, known) or _type_problem(
            entry.fields_by_name["value"], value, scope, known
        )
    if type_ in SCALARS:
        ok = fd.type == SCALARS[type_]
    else:
        full = _resolve(type_, scope, known)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            ok = fd.enum_type.full_name == full
        else:
            ok = fd.message_type is not None and fd.message_type.full_name == full
    return "" if ok else f"{where}: upstream type {type_}, ours differs"


def _compare_message(block: Block, known: dict[str, Block]) -> Iterator[str]:
    try:
        ours: Descriptor = POOL.FindMessageTypeByName(block.full_name)
    except KeyError:
        yield f"message {block.full_name} missing"
        return
    for statement in block.statements:
        match = _FIELD.match(statement)
        if match is None:
            assert statement.startswith(("option", "reserved")), statement
            continue
        label, type_, name, number = match.groups()
        fd = ours.fields_by_name.get(name)
        if fd is None:
            yield f"{block.full_name}.{name} missing"
            continue
        if fd.number != int(number):
            yield f"{fd.full_name}: number {fd.number}, upstream {number}"
        if _is_repeated(fd) != (label == "repeated") and not type_.startswith("map"):
            yield f"{fd.full_name}: repeated-ness differs"
        if problem := _type_problem(fd, type_, block.scope, known):
            yield problem


def _compare_enum(block: Block) -> Iterator[str]:
    try:
        ours = POOL.FindEnumTypeByName(block.full_name)
    except KeyError:
        yield f"enum {block.full_name} missing"
        return
    for statement in block.statements:
        if statement.startswith("option"):
            continue
        name, number = re.fullmatch(r"(\w+)\s*=\s*(-?\d+)", statement).groups()
        value = ours.values_by_name.get(name)
        if value is None or value.number != int(number):
            yield f"{block.full_name}.{name} = {number} missing or renumbered"


def _compare_service(block: Block, known: dict[str, Block]) -> Iterator[str]:
    try:
        ours = POOL.FindServiceByName(block.full_name)
    except KeyError:
        yield f"service {block.full_name} missing"
        return
    for statement in block.statements:
        match = _RPC.match(statement)
        if match is None:
            continue
        name, in_stream, in_type, out_stream, out_type = match.groups()
        method = ours.methods_by_name.get(name)
        if method is None:
            yield f"rpc {block.full_name}/{name} missing"
            continue
        if method.input_type.full_name != _resolve(in_type, block.scope, known):
            yield f"rpc {name}: input {method.input_type.full_name}, upstream {in_type}"
        if method.output_type.full_name != _resolve(out_type, block.scope, known):
            yield f"rpc {name}: output {method.output_type.full_name}, upstream {out_type}"
        if (method.client_streaming, method.server_streaming) != (
            bool(in_stream),
            bool(out_stream),
        ):
            yield f"rpc {name}: streaming differs"


@pytest.mark.parametrize("upstream", UPSTREAM)
def test_identical_to_containerd_source(upstream: str) -> None:
    path = GOCODE / upstream
    require(path.is_file(), f"{path} not installed (golang-github-containerd-containerd-dev)")
    parsed = parse_proto(path)
    assert parsed.blocks, f"parsed nothing from {path}"
    problems: list[str] = []
    for block in parsed.blocks.values():
        if block.kind == "message":
            problems += _compare_message(block, parsed.blocks)
        elif block.kind == "enum":
            problems += _compare_enum(block)
        else:
            problems += _compare_service(block, parsed.blocks)
    assert problems == []


def test_parser_sees_the_task_service_and_nested_messages() -> None:
    """Guard against a parser that silently finds nothing to compare."""
    shim = GOCODE / "containerd/runtime/v2/task/shim.proto"
    containers = GOCODE / "containerd/api/services/containers/v1/containers.proto"
    require(
        shim.is_file() and containers.is_file(),
        "containerd sources not installed (golang-github-containerd-containerd-dev)",
    )
    task = parse_proto(shim).blocks[TASK]
    assert sum(s.startswith("rpc ") for s in task.statements) == 17
    create = parse_proto(shim).blocks["containerd.task.v2.CreateTaskRequest"]
    assert len(create.statements) == 10
    runtime = parse_proto(containers).blocks["containerd.services.containers.v1.Container.Runtime"]
    assert [s.split()[1] for s in runtime.statements] == ["name", "options"]


def test_comparison_reports_a_renumbered_field(tmp_path: Path) -> None:
    """The comparison must be able to fail: feed it a doctored upstream file."""
    doctored = tmp_path / "task.proto"
    doctored.write_text(
        'syntax = "proto3";\npackage containerd.events;\n'
        "message TaskOOM { string container_id = 2; }\n"
        "message TaskGone { string x = 1; }\n"
    )
    blocks = parse_proto(doctored).blocks
    problems = [p for b in blocks.values() for p in _compare_message(b, blocks)]
    assert problems == [
        "containerd.events.TaskOOM.container_id: number 1, upstream 2",
        "message containerd.events.TaskGone missing",
    ]


_GO_TAG = re.compile(r'^\s*\w+\s+(\S+)\s+`protobuf:"(\w+),(\d+),(opt|rep),name=(\w+)', re.M)
_GO_SCALARS = {
    "string": FieldDescriptor.TYPE_STRING,
    "[]byte": FieldDescriptor.TYPE_BYTES,
    "int64": FieldDescriptor.TYPE_INT64,
}


def test_ttrpc_envelope_matches_go_struct_tags() -> None:
    """ttrpc declares Request/Response/KeyValue as Go structs with protobuf tags, not .proto."""
    types_go = GOCODE / "ttrpc" / "types.go"
    require(types_go.is_file(), f"{types_go} not installed (golang-github-containerd-ttrpc-dev)")
    structs = re.findall(r"type (\w+) struct \{(.*?)\n\}", types_go.read_text(), re.S)
    checked = 0
    for struct, body in structs:
        if struct not in ("Request", "Response", "KeyValue"):
            continue
        ours = POOL.FindMessageTypeByName(f"ttrpc.{struct}")
        for go_type, _wire, number, label, name in _GO_TAG.findall(body):
            fd = ours.fields_by_name[name]
            assert fd.number == int(number), fd.full_name
            assert _is_repeated(fd) == (label == "rep"), fd.full_name
            if go_type in _GO_SCALARS:
                assert fd.type == _GO_SCALARS[go_type], fd.full_name
            else:
                assert fd.message_type.name == go_type.split(".")[-1].lstrip("[]*"), fd.full_name
            checked += 1
    assert checked == 9  # 5 Request + 2 Response + 2 KeyValue fields
