"""`wasmtime-shim`: the user-facing tool around the shim (containerd runs the shim itself).

main.py is the command line; images/ builds and reads wasm OCI images; run.py runs an image
without containerd; node/ installs the shim on a node and writes the Kubernetes manifests.

This package depends on the shim (its errors, its version, the format names in
shim/oci/mediatypes.py, the engine under runtimes/); the shim never imports it, so none of it
is loaded when containerd runs the shim. It lives beside the bundle build under packaging/,
which is not a package itself (pyproject.toml maps `wasmtime_shim` to this directory): the
frozen binary carries it, and runs it when called as `wasmtime-shim` (packaging/entry.py).
"""

from __future__ import annotations
