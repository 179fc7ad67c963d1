"""`wasmtime-shim`: the user-facing command around the shim (containerd runs the shim itself)."""
