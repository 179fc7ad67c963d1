"""Wasm OCI images: building them (build.py: the ordinary "rootfs" kind and the archive both
kinds share; artifact.py: CNCF wasm artifacts) and reading them (read.py: layouts and docker
archives, digest-checked; unpack.py: layers into a rootfs). commands.py is the argument
parsing of `wasmtime-shim build | unpack | inspect`.

The media type names the shim also reads are in shim/oci/mediatypes.py, imported from there.
"""

from __future__ import annotations
