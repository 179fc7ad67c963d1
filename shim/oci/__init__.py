"""OCI formats: the runtime spec a bundle carries and the image layouts we write.

Each concern lives in its own module (``spec``, ``mounts``, ``image``); this package re-exports
nothing so that importing one never drags in the others.
"""

from __future__ import annotations
