"""Wasm-layer images (runwasi's layout, CNCF wasm OCI artifacts) through ctr, nerdctl and CRI.

A wasm-layer image keeps its program as a layer that is the wasm binary itself, with no
diff_ids: containerd unpacks nothing, gives the container an empty snapshot and names the
image in the container record; the shim reads the program from the content store
(shim/oci/content.py). Whether containerd gets that far is containerd's business, and these
tests pin what each version does with the images `wasmtime-shim build` writes:

- runwasi's layout (the tool's default): `ctr run` runs it where ctr's client code filters the
  manifest's layers by media type before comparing them with the diff_ids (containerd PR
  #9142: 1.6.25+, 1.7.7+, 2.x); ctr 1.6.20 refuses it itself with "mismatched image rootfs
  and manifest layers" before any shim is involved. CRI runs it on every version: its
  container snapshot is made from the (empty) diff_ids without that comparison.
- the CNCF artifact: `ctr run` refuses it on every version, with that same error before the
  fix and "unknown image config media type application/vnd.wasm.config.v0+json" after it
  (ctr builds the spec only from an OCI or docker image config). CRI reads any config as an
  OCI image config and runs it.
- nerdctl (v1.7.7, whose client code is containerd 1.7.22's: the unpack and the spec are
  made by nerdctl, whatever the daemon's version) runs runwasi's layout; it reads image
  configs of the OCI and docker media types only, so a CNCF artifact is for it an image with
  no usable config: `--pull never` says "image not available".

Each image is imported with ``ctr image import --all-platforms --no-unpack``: ctr 1.6 drops
``wasm`` platforms without the first and, before 1.6.25, fails the import's unpack without the
second. The containerd under test is the fixtures' (``containerd.ctr``); the tests marked
``matrix`` are the ones run on every containerd version.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime

from runtimes.base import EntrypointKind
from runtimes.wasmtime.engine import load_source
from shim.warm import protocol
from tests.containerd import CRI_NAMESPACE, RUNTIME, WASMTIME_HANDLER, PrivateContainerd
from tests.cri import CriClient
from tests.e2e.helpers import wat_binary
from tests.nerdctl import NERDCTL, Nerdctl
from tests.prereq import require
from wasmtime_shim.images.artifact import build_artifact, build_runwasi_image
from wasmtime_shim.images.build import (
    MEDIA_TYPE_CONFIG,
    Blob,
    ImageConfig,
    OciImage,
    assemble,
    canonical_json,
)
from wasmtime_shim.images.commands import CTR_IMPORT_FLAGS_RUNWASI

WASM_CONFIG = "application/vnd.wasm.config.v0+json"
MISMATCH = "mismatched image rootfs and manifest layers"
CACHE = Path("/var/lib/containerd-shim-wasmtime/cache")
Bed = tuple[PrivateContainerd, CriClient]


@dataclass(frozen=True, slots=True)
class Program:
    """A test program, what its image's Cmd is, and what a run of it prints and returns."""

    name: str
    wasm: bytes
    cmd: tuple[str, ...]
    code: int
    out: str


@pytest.fixture(scope="module")
def programs(build_wasm: Callable[[str], Path]) -> dict[str, Program]:
    return {
        "module": Program("module", build_wasm("hello").read_bytes(), ("5",), 5, "argv[1]=5"),
        "component": Program(
            "component", wat_binary("hello_component"), (), 0, "hello from a component"
        ),
    }


def build(fmt: str, program: Program, directory: Path) -> tuple[str, Path]:
    """The program as a ``fmt`` image (``runwasi`` or ``artifact``): its ref and archive."""
    ref = f"localhost/wasm-layers/{program.name}-{fmt}:1"
    config = ImageConfig(entrypoint=("/app.wasm",), cmd=program.cmd)
    image: OciImage = (
        build_runwasi_image(program.wasm, ref=ref, config=config)
        if fmt == "runwasi"
        else build_artifact(program.wasm, ref=ref, config=config)
    )
    return ref, image.write(directory / f"{program.name}-{fmt}.tar")


def ctr_import(containerd: PrivateContainerd, namespace: str, archive: Path) -> None:
    containerd.ctr("image", "import", *CTR_IMPORT_FLAGS_RUNWASI, str(archive), namespace=namespace)


def ctr_version(containerd: PrivateContainerd) -> tuple[int, int, int]:
    """The ctr client's version (ctr's own code decides what these tests pin)."""
    text = containerd.ctr("version").stdout
    found = re.search(r"Client:\s*\n\s*Version:\s*v?(\d+)\.(\d+)\.(\d+)", text)
    assert found, f"no client version in: {text!r}"
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


def filters_layers(version: tuple[int, int, int]) -> bool:
    """Whether ctr compares only the layer-typed layers with the diff_ids (PR #9142)."""
    return version >= (1, 7, 7) or (1, 6, 25) <= version < (1, 7, 0)


def ctr_run(containerd: PrivateContainerd, ns: str, ref: str, cid: str) -> tuple[int, str, str]:
    run = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, ref, cid, namespace=ns, check=False, timeout=120
    )
    return run.returncode, run.stdout, run.stderr


# ------------------------------------------------------------------ ctr run


@pytest.mark.parametrize("kind", ["module", "component"])
def test_runwasi_image_runs_with_ctr_run_where_ctr_passes_it(
    containerd: PrivateContainerd,
    ns: str,
    programs: dict[str, Program],
    tmp_path: Path,
    kind: str,
) -> None:
    program = programs[kind]
    ref, archive = build("runwasi", program, tmp_path)
    ctr_import(containerd, ns, archive)
    code, out, err = ctr_run(containerd, ns, ref, f"rw-{kind}")
    if filters_layers(ctr_version(containerd)):
        assert (code, program.out in out) == (program.code, True), (
            f"rc={code} out={out!r} err={err!r}\n{containerd.log_tail()}"
        )
    else:
        assert code != 0 and MISMATCH in err, f"rc={code} out={out!r} err={err!r}"
        assert containerd.ctr("containers", "ls", "-q", namespace=ns).stdout == ""


def test_ctr_run_refuses_a_cncf_artifact_on_every_version(
    containerd: PrivateContainerd, ns: str, programs: dict[str, Program], tmp_path: Path
) -> None:
    ref, archive = build("artifact", programs["module"], tmp_path)
    ctr_import(containerd, ns, archive)
    code, out, err = ctr_run(containerd, ns, ref, "art")
    refusal = (
        f"unknown image config media type {WASM_CONFIG}"
        if filters_layers(ctr_version(containerd))
        else MISMATCH
    )
    assert code != 0 and refusal in err, f"rc={code} out={out!r} err={err!r}"
    assert containerd.ctr("containers", "ls", "-q", namespace=ns).stdout == ""


# ------------------------------------------------------------------ nerdctl


@pytest.fixture
def nerdctl(containerd: PrivateContainerd, ns: str) -> Iterator[Nerdctl]:
    """nerdctl on the test's namespace, its data root under the containerd's base dir."""
    problem = NERDCTL.problem()
    require(problem is None, problem or "")
    client = Nerdctl(NERDCTL.build(), containerd.address, ns, containerd.base / "nerdctl" / ns)
    yield client
    for cid in client.run("ps", "-a", "-q", "--no-trunc").stdout.split():
        client.run("rm", "-f", cid)


def nerdctl_run(client: Nerdctl, archive: Path, ref: str) -> tuple[int, str, str]:
    load = client.run("load", "--all-platforms", "-i", str(archive))
    assert load.returncode == 0, load.stderr
    run = client.run(
        "run", "--rm", "--net", "none", "--pull", "never", "--runtime", RUNTIME, ref, timeout=120
    )
    return run.returncode, run.stdout, run.stderr


@pytest.mark.parametrize("kind", ["module", "component"])
def test_runwasi_image_runs_with_nerdctl(
    nerdctl: Nerdctl,
    containerd: PrivateContainerd,
    programs: dict[str, Program],
    tmp_path: Path,
    kind: str,
) -> None:
    program = programs[kind]
    ref, archive = build("runwasi", program, tmp_path)
    code, out, err = nerdctl_run(nerdctl, archive, ref)
    assert (code, program.out in out) == (program.code, True), (
        f"rc={code} out={out!r} err={err!r}\n{containerd.log_tail()}"
    )


def test_nerdctl_refuses_a_cncf_artifact(
    nerdctl: Nerdctl, programs: dict[str, Program], tmp_path: Path
) -> None:
    ref, archive = build("artifact", programs["module"], tmp_path)
    code, out, err = nerdctl_run(nerdctl, archive, ref)
    assert code != 0 and f'image not available: "{ref}"' in err.replace('\\"', '"'), (
        f"rc={code} out={out!r} err={err!r}"
    )


# ------------------------------------------------------------------ CRI


@pytest.fixture
def cri_images(cri_bed: Bed, tmp_path: Path) -> Iterator[list[str]]:
    """Refs imported into the CRI namespace by a test; removed afterwards."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        cri_bed[0].ctr("images", "rm", "--sync", ref, namespace=CRI_NAMESPACE, check=False)


def cri_import(bed: Bed, refs: list[str], ref: str, archive: Path) -> None:
    ctr_import(bed[0], CRI_NAMESPACE, archive)
    refs.append(ref)
    bed[1].wait_image(ref)


def cri_run(
    crictl: CriClient, pod_name: str, ref: str, args: tuple[str, ...] = ()
) -> tuple[int, list[str]]:
    """A wasmtime pod running ``ref`` once: (exit code, its stdout lines)."""
    pod = crictl.run_pod(pod_name, runtime_handler=WASMTIME_HANDLER)
    cid = crictl.create_container(pod, "app", ref, args=args)
    crictl.start_container(cid)
    status = crictl.wait_exited(cid)
    lines = [e.content for e in crictl.read_log(cid) if e.stream == "stdout"]
    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)
    return status.exit_code, lines


@pytest.mark.parametrize("fmt", ["runwasi", "artifact"])
@pytest.mark.parametrize("kind", ["module", "component"])
def test_wasm_layer_image_runs_through_cri(
    cri_bed: Bed,
    crictl: CriClient,
    cri_images: list[str],
    programs: dict[str, Program],
    tmp_path: Path,
    fmt: str,
    kind: str,
) -> None:
    program = programs[kind]
    ref, archive = build(fmt, program, tmp_path)
    cri_import(cri_bed, cri_images, ref, archive)
    code, lines = cri_run(crictl, f"{fmt}-{kind}", ref)
    assert (code, any(program.out in line for line in lines)) == (program.code, True), (
        f"rc={code} log={lines}\n{cri_bed[0].log_tail()}"
    )


def runwasi_builder_image(wasm: bytes, ref: str, name: str) -> OciImage:
    """An image shaped as runwasi's oci-tar-builder shapes its own: a relative Entrypoint
    ``<name>.wasm``, an untitled layer, ``os`` wasip1 whatever the wasm kind."""
    layer = Blob("application/vnd.bytecodealliance.wasm.component.layer.v0+wasm", wasm)
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {
            "Entrypoint": [f"{name}.wasm"],
            "Labels": {"containerd.runwasi.layers": layer.digest.removeprefix("sha256:")},
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    return assemble(
        ref=ref,
        config=Blob(MEDIA_TYPE_CONFIG, canonical_json(config)),
        layer=layer,
        diff_id=layer.digest,
        os_name="wasip1",
        annotations={"io.containerd.image.name": ref},
    )


@pytest.mark.parametrize("kind", ["module", "component"])
def test_an_image_shaped_by_runwasis_own_builder_runs_through_cri(
    cri_bed: Bed,
    crictl: CriClient,
    cri_images: list[str],
    programs: dict[str, Program],
    tmp_path: Path,
    kind: str,
) -> None:
    program = programs[kind]
    ref = f"localhost/wasm-layers/built-by-runwasi-{kind}:1"
    image = runwasi_builder_image(program.wasm, ref, "demo")
    cri_import(cri_bed, cri_images, ref, image.write(tmp_path / "rw.tar"))
    code, lines = cri_run(crictl, f"rw-{kind}", ref, program.cmd)
    assert (code, any(program.out in line for line in lines)) == (program.code, True), (
        f"rc={code} log={lines}\n{cri_bed[0].log_tail()}"
    )


def test_a_runwasi_image_is_compiled_once_per_node(
    cri_bed: Bed, crictl: CriClient, cri_images: list[str], tmp_path: Path
) -> None:
    """Two pods of one runwasi image: the warm runtime compiles its layer once, into the
    node's cache, and the second container maps that entry. The module is new to the node
    (an export named by a fresh uuid), so no earlier run's entry can answer for it."""
    containerd = cri_bed[0]
    wasm = wasmtime.wat2wasm(
        f'(module (func (export "_start")) (func (export "u{uuid.uuid4().hex}")))'
    )
    ref = "localhost/wasm-layers/compile-once:1"
    image = build_runwasi_image(
        wasm, ref=ref, config=ImageConfig(entrypoint=("/once.wasm",)), title="once.wasm"
    )
    cri_import(cri_bed, cri_images, ref, image.write(tmp_path / "once.tar"))
    log = Path(protocol.control_path(str(containerd.address), ".log"))
    before = log.stat().st_size if log.exists() else 0
    for n in range(2):
        code, lines = cri_run(crictl, f"once-{n}", ref)
        assert code == 0, f"log={lines}\n{containerd.log_tail()}"
    key = load_source(wasm, EntrypointKind.MODULE, "").key
    assert list((CACHE / key[:2]).glob(key + "-*.cwasm")), "no cache entry for the layer"
    with log.open(errors="replace") as f:
        f.seek(before)
        compiles = re.findall(r"compile /once\.wasm: (.*)", f.read())
    assert sum("compiled in" in line for line in compiles) == 1, compiles
