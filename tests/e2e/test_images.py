"""Images built by `wasmtime-shim build`, through the real containerd and `ctr`.

- rootfs images (module and component): `ctr image import` then `ctr run --runtime
  io.containerd.wasmtime.v1` runs them with the image's entrypoint and Cmd, on every version.
- wasm-layer images (runwasi's layout and CNCF artifacts, module and component):
  `ctr image import --no-unpack` stores them, and the shim-side loader (shim/oci/content.py)
  reads the program back from the content store over gRPC for a container that names the
  image. What each containerd's `ctr run`, nerdctl and CRI do with them is pinned in
  test_wasm_layer_images.py.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shim.errors import FailedPrecondition, NotFound
from shim.oci.content import NAMESPACE_METADATA, load_wasm_from_content_store
from tests.containerd import RUNTIME, PrivateContainerd
from tests.prereq import require
from tests.wasm import build
from wasmtime_shim.images import commands as image_commands
from wasmtime_shim.images.build import CTR_IMPORT_FLAGS

WAT_DIR = Path(__file__).resolve().parents[1] / "wasm" / "wat"
SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def cli_build(*argv: str) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    image_commands.register(sub)
    args = p.parse_args(["build", *argv])
    args.func(args)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    problem = build.toolchain_problem()
    require(problem is None, problem or "")
    return {"module": build.build_c("hello"), "component": WAT_DIR / "hello_component.wat"}


@pytest.fixture(scope="module")
def images(programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("images")
    built = {}
    for kind, src in programs.items():
        for fmt in ("rootfs", "runwasi", "artifact"):
            path = out / f"{kind}-{fmt}.tar"
            cli_build(
                str(src), "-o", str(path), "--format", fmt, "--arg", "3", "--name", ref(kind, fmt)
            )
            built[f"{kind}-{fmt}"] = path
    return built


def ref(kind: str, fmt: str) -> str:
    return f"docker.io/library/{kind}-{fmt}:test"


def ctr_import(containerd: PrivateContainerd, ns: str, archive: Path, fmt: str) -> None:
    flags = CTR_IMPORT_FLAGS if fmt == "rootfs" else image_commands.CTR_IMPORT_FLAGS_RUNWASI
    containerd.ctr("image", "import", *flags, str(archive), namespace=ns)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("module", (3, "hello from wasm")),
        ("component", (0, "hello from a component\n")),
    ],
)
def test_rootfs_image_imports_and_runs_with_ctr(
    containerd: PrivateContainerd,
    ns: str,
    images: dict[str, Path],
    kind: str,
    expected: tuple[int, str],
) -> None:
    ctr_import(containerd, ns, images[f"{kind}-rootfs"], "rootfs")
    run = containerd.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        ref(kind, "rootfs"),
        f"r-{kind}",
        namespace=ns,
        check=False,
        timeout=120,
    )
    code, text = expected
    assert run.returncode == code and text in run.stdout, (
        f"rc={run.returncode} out={run.stdout!r} err={run.stderr!r}\n{containerd.log_tail()}"
    )


@pytest.fixture
def grpc_containers(
    containerd: PrivateContainerd, ns: str
) -> Iterator[containers_pb2_grpc.ContainersStub]:
    with grpc.insecure_channel(f"unix://{containerd.address}") as channel:
        yield containers_pb2_grpc.ContainersStub(channel)


def create_record(stub: containers_pb2_grpc.ContainersStub, ns: str, cid: str, image: str) -> None:
    """A container record naming ``image`` (what `ctr run` would create, minus the snapshot)."""
    container = containers_pb2.Container(
        id=cid,
        image=image,
        runtime=containers_pb2.Container.Runtime(name=RUNTIME),
        spec=any_pb2.Any(type_url=SPEC_TYPE, value=b"{}"),
    )
    stub.Create(
        containers_pb2.CreateContainerRequest(container=container),
        metadata=((NAMESPACE_METADATA, ns),),
        timeout=10,
    )


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("runwasi", "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"),
        ("artifact", "application/wasm"),
    ],
)
@pytest.mark.parametrize("kind", ["module", "component"])
def test_wasm_layer_is_loaded_from_the_content_store(
    containerd: PrivateContainerd,
    ns: str,
    images: dict[str, Path],
    programs: dict[str, Path],
    grpc_containers: containers_pb2_grpc.ContainersStub,
    kind: str,
    fmt: str,
    media_type: str,
    tmp_path: Path,
) -> None:
    ctr_import(containerd, ns, images[f"{kind}-{fmt}"], fmt)
    create_record(grpc_containers, ns, "art", ref(kind, fmt))
    loaded = load_wasm_from_content_store(str(containerd.address), ns, "art", str(tmp_path))
    assert loaded is not None
    wasm = Path(loaded.path).read_bytes()
    expected = image_commands.load_module(programs[kind])
    assert wasm == expected
    assert (loaded.media_type, loaded.layer, loaded.args, loaded.title) == (
        media_type,
        0,
        ("/app.wasm", "3"),
        "app.wasm",
    )
    assert Path(loaded.path).parent == tmp_path


def test_rootfs_images_and_imageless_containers_are_not_artifacts(
    containerd: PrivateContainerd,
    ns: str,
    images: dict[str, Path],
    grpc_containers: containers_pb2_grpc.ContainersStub,
    tmp_path: Path,
) -> None:
    ctr_import(containerd, ns, images["module-rootfs"], "rootfs")
    create_record(grpc_containers, ns, "compat", ref("module", "rootfs"))
    create_record(grpc_containers, ns, "none", "")
    for cid in ("compat", "none"):
        assert load_wasm_from_content_store(str(containerd.address), ns, cid, str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []


def test_missing_container_image_or_blob_is_an_error_naming_it(
    containerd: PrivateContainerd,
    ns: str,
    images: dict[str, Path],
    programs: dict[str, Path],
    grpc_containers: containers_pb2_grpc.ContainersStub,
    tmp_path: Path,
) -> None:
    address = str(containerd.address)
    with pytest.raises(NotFound, match="container nope"):
        load_wasm_from_content_store(address, ns, "nope", str(tmp_path))
    create_record(grpc_containers, ns, "gone", "docker.io/library/never-imported:1")
    with pytest.raises(NotFound, match="never-imported"):
        load_wasm_from_content_store(address, ns, "gone", str(tmp_path))

    ctr_import(containerd, ns, images["module-artifact"], "artifact")
    create_record(grpc_containers, ns, "broken", ref("module", "artifact"))
    module = image_commands.load_module(programs["module"])
    wasm_digest = "sha256:" + hashlib.sha256(module).hexdigest()  # the artifact's layer
    containerd.ctr("content", "rm", wasm_digest, namespace=ns)
    with pytest.raises((NotFound, FailedPrecondition), match=wasm_digest):
        load_wasm_from_content_store(address, ns, "broken", str(tmp_path))
    assert list(tmp_path.iterdir()) == []
