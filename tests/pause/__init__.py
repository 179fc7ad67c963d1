"""Native (Linux ELF) test programs for the CRI test bed and the images that carry them.

``pause.c`` is the pod sandbox process; ``sidecar.c`` is a busybox-style static program that
plays a native sidecar. ``build.py`` compiles them statically with the host's C compiler and
packs each into a one-layer OCI image for the host platform, imported with ctr: nothing is
ever pulled from a registry.
"""

from __future__ import annotations
