"""Building wasm-layer images: runwasi's layout and CNCF wasm OCI artifacts.

Neither is a filesystem image: the single layer is the wasm binary itself, stored as is (no
tar, no compression), and runtimes that know the formats (runwasi, and the shim through
``shim/oci/content.py``) read the program straight from the content store; nothing is
unpacked into a rootfs. The media type names live in ``shim/oci/mediatypes.py``, which the
shim and these tools share.

runwasi's layout (``build_runwasi_image``, what runwasi's oci-tar-builder writes): an ordinary
OCI image config (``application/vnd.oci.image.config.v1+json``: containerd's ``ctr run``,
nerdctl and CRI read its Entrypoint, Cmd, Env and WorkingDir) with architecture ``wasm``, an
empty ``rootfs.diff_ids`` (containerd 1.6.25+ / 1.7.7+ then unpack nothing and give the
container an empty snapshot) and the label ``containerd.runwasi.layers`` (a digest of the
layers, so that two programs never share a config digest, which CRI uses as the image id);
the layer is ``application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`` for core
modules and components alike.

The CNCF TAG Runtime "Wasm OCI Artifact" (``build_artifact``): config
``application/vnd.wasm.config.v0+json``, layer ``application/wasm``.

The config carries what the spec defines (``architecture``, ``os``, ``layerDigests``,
``created``, ``author``, and ``component`` for components is optional, we leave it out),
plus one extension of ours: a ``config`` object with the OCI image config's ``Entrypoint``,
``Cmd``, ``Env``, ``WorkingDir`` and ``Labels`` keys, so that args and env given at build time
survive. Readers that do not know it ignore it (the spec's config is an open JSON object).

Which wasm is which is decided by the binary's header, never its file name: ``\\0asm`` then
version 1 (a core module, platform os ``wasip1``) or the component layer (``wasip2``).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping

from shim.errors import InvalidArgument
from shim.oci.mediatypes import (
    ANNOTATION_TITLE,
    LABEL_RUNWASI_LAYERS,
    MEDIA_TYPE_WASM_COMPONENT_LAYER,
    MEDIA_TYPE_WASM_CONFIG,
    MEDIA_TYPE_WASM_LAYER,
    WASM_ARCHITECTURE,
)
from wasmtime_shim.images.build import (
    ANNOTATION_WASM_VARIANT,
    MEDIA_TYPE_CONFIG,
    WASM_OS,
    WASM_OS_P2,
    Blob,
    ImageConfig,
    OciImage,
    assemble,
    canonical_json,
    check_ref,
    runtime_config,
)

WASM_MAGIC = b"\0asm"


class WasmKind(enum.Enum):
    MODULE = "module"
    COMPONENT = "component"


def wasm_kind(data: bytes) -> WasmKind:
    """Module or component, from the 8-byte header. Raises InvalidArgument for anything else."""
    if len(data) < 8 or data[:4] != WASM_MAGIC:
        raise InvalidArgument("not a binary wasm file (no \\0asm header)")
    layer = int.from_bytes(data[6:8], "little")
    if layer == 0 and int.from_bytes(data[4:6], "little") == 1:
        return WasmKind.MODULE
    if layer == 1:
        return WasmKind.COMPONENT
    raise InvalidArgument(f"unknown wasm binary version {data[4:8].hex()}")


def platform_os(kind: WasmKind) -> str:
    return WASM_OS_P2 if kind is WasmKind.COMPONENT else WASM_OS


def build_artifact(
    wasm: bytes,
    *,
    ref: str,
    config: ImageConfig | None = None,
    title: str = "app.wasm",
    annotations: Mapping[str, str] | None = None,
) -> OciImage:
    """A wasm OCI artifact holding ``wasm`` (binary; translate WAT first) as its one layer.

    ``title`` becomes the layer's ``org.opencontainers.image.title`` (the file name a reader
    gives the module). Raises InvalidArgument for a bad ref or a non-wasm payload.
    """
    check_ref(ref)
    kind = wasm_kind(wasm)
    os_name = platform_os(kind)
    layer = Blob(MEDIA_TYPE_WASM_LAYER, bytes(wasm))
    body: dict[str, object] = {
        "architecture": WASM_ARCHITECTURE,
        "os": os_name,
        "layerDigests": [layer.digest],
    }
    if config is not None:
        body["config"] = runtime_config(config)
    config_blob = Blob(MEDIA_TYPE_WASM_CONFIG, canonical_json(body))
    manifest_annotations = dict(annotations or {})
    manifest_annotations.pop(ANNOTATION_WASM_VARIANT, None)  # not a "compat" image
    return assemble(
        ref=ref,
        config=config_blob,
        layer=layer,
        diff_id=layer.digest,
        os_name=os_name,
        annotations=manifest_annotations,
        layer_annotations={ANNOTATION_TITLE: title},
    )


def build_runwasi_image(
    wasm: bytes,
    *,
    ref: str,
    config: ImageConfig,
    title: str = "app.wasm",
    annotations: Mapping[str, str] | None = None,
) -> OciImage:
    """An image in runwasi's layout holding ``wasm`` (binary; translate WAT first) as its one
    layer; ``config`` is the image config's runtime part (give it an Entrypoint: containerd
    refuses to create a container with no args).

    ``title`` becomes the layer's ``org.opencontainers.image.title``. Raises InvalidArgument
    for a bad ref or a non-wasm payload.
    """
    check_ref(ref)
    kind = wasm_kind(wasm)
    os_name = platform_os(kind)
    layer = Blob(MEDIA_TYPE_WASM_COMPONENT_LAYER, bytes(wasm))
    unique = hashlib.sha256(layer.digest.removeprefix("sha256:").encode()).hexdigest()
    labels = dict(config.labels)
    labels[LABEL_RUNWASI_LAYERS] = unique
    body = {
        "architecture": WASM_ARCHITECTURE,
        "os": os_name,
        "config": runtime_config(dataclasses.replace(config, labels=tuple(labels.items()))),
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    manifest_annotations = dict(annotations or {})
    manifest_annotations.pop(ANNOTATION_WASM_VARIANT, None)  # nothing is in a rootfs
    return assemble(
        ref=ref,
        config=Blob(MEDIA_TYPE_CONFIG, canonical_json(body)),
        layer=layer,
        diff_id=layer.digest,
        os_name=os_name,
        annotations=manifest_annotations,
        layer_annotations={ANNOTATION_TITLE: title},
    )
