"""Which layer of a wasm-layer image is the container's program.

A wasm-layer image keeps its program as a layer blob that is the wasm binary itself (no tar):
runwasi's layout (an ordinary OCI image config with architecture ``wasm`` and no diff_ids,
layers ``application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`` or
``application/wasm``) and the CNCF wasm OCI artifact (config
``application/vnd.wasm.config.v0+json``, layer ``application/wasm``). An image is one when its
config says architecture ``wasm`` and at least one layer has a wasm media type; its other
layers (say, a runtime's configuration file) are not the program and are ignored, as runwasi
ignores them.

runwasi runs such an image only when it has exactly one wasm layer, whatever args[0] names
(only a ``#func`` suffix counts). The single layer is taken the same way here. Among several,
the one whose ``org.opencontainers.image.title`` is args[0]'s file name is the program, so an
image may carry several programs and each container name its own; with no such title the
choice is refused, naming the titles, rather than guessed.

Pure functions over the parsed JSON: the shim (``shim/oci/content.py``, reading containerd's
content store) and the image tools (``wasmtime_shim.images.unpack``) decide the same way.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from shim.errors import FailedPrecondition
from shim.oci.mediatypes import ANNOTATION_TITLE, WASM_ARCHITECTURE, WASM_LAYER_MEDIA_TYPES


def is_wasm_config(config: Mapping[str, Any]) -> bool:
    """The image config (OCI or CNCF wasm) says the image is for the ``wasm`` architecture."""
    return config.get("architecture") == WASM_ARCHITECTURE


def wasm_layer_indexes(layers: Sequence[Any]) -> tuple[int, ...]:
    """The positions of the manifest's layers whose media type says they are wasm binaries."""
    return tuple(
        n
        for n, layer in enumerate(layers)
        if isinstance(layer, Mapping) and layer.get("mediaType") in WASM_LAYER_MEDIA_TYPES
    )


def title(layer: Mapping[str, Any]) -> str | None:
    """The layer's ``org.opencontainers.image.title`` annotation, if it has a usable one."""
    annotations = layer.get("annotations")
    value = annotations.get(ANNOTATION_TITLE) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) and value else None


def pick(layers: Sequence[Any], arg0: str | None, what: str) -> int:
    """The position of the program among ``layers`` (a manifest's ``layers``), for a container
    whose args[0] is ``arg0``. See the module docstring for the rule.

    Raises FailedPrecondition (naming ``what``) when the image has no wasm layer, or several
    and none titled after args[0]'s file name.
    """
    found = wasm_layer_indexes(layers)
    if not found:
        raise FailedPrecondition(f"{what}: no layer is a wasm binary")
    if len(found) == 1:
        return found[0]
    path = (arg0 or "").split("#", 1)[0]
    name = posixpath.basename(path)
    titled = [n for n in found if name and _base(title(layers[n])) == name]
    if len(titled) == 1:
        return titled[0]
    titles = ", ".join(repr(title(layers[n])) for n in found)
    if titled:
        raise FailedPrecondition(
            f"{what}: {len(titled)} wasm layers are titled {name!r}; the program is ambiguous"
        )
    raise FailedPrecondition(
        f"{what}: {len(found)} wasm layers (titles {titles}) and none is titled after the "
        f"entrypoint {path!r}: name one of them in process.args[0]"
    )


def _base(value: str | None) -> str | None:
    return posixpath.basename(value) if value else None
