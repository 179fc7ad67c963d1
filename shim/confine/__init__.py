"""A wasm guest's confinement, as runc gives a native container: decided from the spec at
Create (policy.py), applied by the container process before the guest's first instruction
(rootfs.py, privileges.py, seccomp.py; the order is in shim/proc/child.py and the README's
"Confinement")."""
