"""Building wasm OCI artifacts (CNCF TAG Runtime "Wasm OCI Artifact" layout).

An artifact is not a filesystem image: its config is ``application/vnd.wasm.config.v0+json``
and its single layer is the wasm binary itself, ``application/wasm``, stored as is (no tar,
no compression). Runtimes that know the format (runwasi, and the shim through
``shim/oci/content.py``) read the module straight from the content store; nothing is
unpacked into a rootfs. The media type names live in ``shim/oci/mediatypes.py``, which the
shim and these tools share.

The config carries what the spec defines (``architecture``, ``os``, ``layerDigests``,
``created``, ``author``, and ``component`` for components is optional, we leave it out),
plus one extension of ours: a ``config`` object with the OCI image config's ``Entrypoint``,
``Cmd``, ``Env``, ``WorkingDir`` and ``Labels`` keys, so that args and env given at build time
survive. Readers that do not know it ignore it (the spec's config is an open JSON object).

Which wasm is which is decided by the binary's header, never its file name: ``\\0asm`` then
version 1 (a core module, platform os ``wasip1``) or the component layer (``wasip2``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from shim.errors import InvalidArgument
from shim.oci.mediatypes import (
    ANNOTATION_TITLE,
    MEDIA_TYPE_WASM_CONFIG,
    MEDIA_TYPE_WASM_LAYER,
    WASM_ARCHITECTURE,
)
from wasmtime_shim.images.build import (
    ANNOTATION_WASM_VARIANT,
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
