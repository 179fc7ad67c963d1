"""OCI formats as the shim meets them: the bundle's runtime spec, its rootfs mounts, and a
wasm OCI artifact's module in containerd's content store.

Each concern lives in its own module (``spec``, ``mounts``, ``content``, and ``mediatypes``
for the format names ``content`` shares with the image tools); this package re-exports nothing
so that importing one never drags in the others. Building and unpacking images is not the
shim's job: that is ``wasmtime_shim.images`` (packaging/wasmtime_shim/images/).
"""

from __future__ import annotations
