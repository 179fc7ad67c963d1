"""The shim runs a wasm-layer image's program (runwasi's layout, a CNCF artifact) from
containerd's content store, on the venv and on the shipped bundle.

containerd 1.6.20's `ctr run` refuses both before any shim is involved (see
tests/e2e/test_wasm_layer_images.py), so the container record is made through containerd's
gRPC API the way `ctr run` would make it — with an empty host directory as its root instead of
a snapshot (the image has no filesystem) — and `ctr task start` then drives the shim exactly
as for any container: Create (where the shim finds no entrypoint in the rootfs and loads the
wasm layer from the content store), Start, Wait, Delete.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shim.oci.content import NAMESPACE_METADATA
from tests.containerd import RUNTIME, PrivateContainerd
from tests.e2e.helpers import wat_binary
from tests.wasm import build
from wasmtime_shim.images.artifact import build_artifact, build_runwasi_image
from wasmtime_shim.images.build import ImageConfig
from wasmtime_shim.images.commands import CTR_IMPORT_FLAGS_ARTIFACT

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def _spec(root: Path, args: list[str]) -> bytes:
    return json.dumps(
        {
            "ociVersion": "1.0.2",
            "process": {"args": args, "cwd": "/", "env": ["A=1"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": str(root)},
            "linux": {},
        }
    ).encode()


def _create(containerd: PrivateContainerd, ns: str, cid: str, image: str, spec: bytes) -> None:
    with grpc.insecure_channel(f"unix://{containerd.address}") as channel:
        containers_pb2_grpc.ContainersStub(channel).Create(
            containers_pb2.CreateContainerRequest(
                container=containers_pb2.Container(
                    id=cid,
                    image=image,
                    runtime=containers_pb2.Container.Runtime(name=RUNTIME),
                    spec=any_pb2.Any(type_url=SPEC_TYPE, value=spec),
                )
            ),
            metadata=((NAMESPACE_METADATA, ns),),
            timeout=10,
        )


@pytest.mark.parametrize("fmt", ["runwasi", "artifact"])
@pytest.mark.parametrize(
    ("program", "args", "code", "out"),
    [
        ("hello", ["app.wasm", "7"], 7, "argv[1]=7"),
        ("hello_component", ["app.wasm"], 0, "hello from a component"),
    ],
)
def test_artifact_module_runs_from_the_content_store(
    bed: PrivateContainerd,
    bed_ns: str,
    tmp_path: Path,
    build_wasm: object,
    program: str,
    args: list[str],
    code: int,
    out: str,
    fmt: str,
) -> None:
    """On the venv's shim and on the shipped bundle (which must carry grpc for this)."""
    containerd, ns = bed, bed_ns
    wasm = build.build_c(program).read_bytes() if program == "hello" else wat_binary(program)
    ref = f"docker.io/library/{program}-{fmt}:test"
    config = ImageConfig(entrypoint=("/app.wasm",))
    image = (
        build_runwasi_image(wasm, ref=ref, config=config)
        if fmt == "runwasi"
        else build_artifact(wasm, ref=ref)
    )
    archive = image.write(tmp_path / "a.tar")
    containerd.ctr("image", "import", *CTR_IMPORT_FLAGS_ARTIFACT, str(archive), namespace=ns)
    root = tmp_path / "root"
    root.mkdir()
    _create(containerd, ns, "art", ref, _spec(root, args))
    try:
        run = containerd.ctr("task", "start", "art", namespace=ns, check=False, timeout=60)
        assert (run.returncode, out in run.stdout) == (code, True), (
            f"rc={run.returncode} out={run.stdout!r} err={run.stderr!r}\n{containerd.log_tail()}"
        )
        assert not any(root.iterdir()), "the program must not be written into the rootfs"
        containerd.ctr("task", "delete", "art", namespace=ns, check=False)
    finally:
        containerd.ctr("container", "delete", "art", namespace=ns, check=False)


def test_no_entrypoint_and_no_artifact_is_not_found(
    containerd: PrivateContainerd, ns: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _create(containerd, ns, "none", "", _spec(root, ["missing.wasm"]))
    try:
        run = containerd.ctr("task", "start", "none", namespace=ns, check=False, timeout=60)
        assert run.returncode != 0
        assert "missing.wasm" in run.stderr and "not found" in run.stderr, run.stderr
    finally:
        containerd.ctr("container", "delete", "none", namespace=ns, check=False)
