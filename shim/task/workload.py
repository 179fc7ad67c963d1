"""Wasm or native: which containers this shim runs in wasmtime and which through runc.

The rules, in order (README "Wasm and native containers" says the same for users):
1. The CRI sandbox (`io.kubernetes.cri.container-type: sandbox`, the pause container) is
   always native.
2. `module.wasm.image/variant: compat-smart` or `run.oci.handler: wasm-smart` (crun's
   annotations): an entrypoint ending in `.wasm` or `.wat` is wasm, anything else native.
3. `module.wasm.image/variant: compat` or `run.oci.handler: wasm`: every container of the pod
   must be wasm; a native entrypoint is refused, naming the annotation.
4. Otherwise by content: a wasm module, component or WAT runs in wasmtime. A native entrypoint
   (ELF, `#!` script) runs natively inside a Kubernetes pod (sidecars) and is refused outside
   one: there, choosing this runtime for a native program is almost certainly a mistake, and
   runc is the runtime for it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from runtimes.base import Entrypoint, NotWasm
from shim.errors import FailedPrecondition
from shim.oci.spec import ANNOTATION_CONTAINER_TYPE

ANNOTATION_VARIANT = "module.wasm.image/variant"
ANNOTATION_HANDLER = "run.oci.handler"
WASM_SUFFIXES = (".wasm", ".wat")


class Workload(enum.Enum):
    WASM = "wasm"
    NATIVE = "native"


class Policy(enum.Enum):
    AUTO = "auto"
    ALL_WASM = "all-wasm"
    SMART = "smart"


def policy(annotations: Mapping[str, str]) -> tuple[Policy, str]:
    """The policy the annotations ask for, and the annotation that asked (for messages)."""
    variant = annotations.get(ANNOTATION_VARIANT, "")
    handler = annotations.get(ANNOTATION_HANDLER, "")
    if variant == "compat-smart":
        return Policy.SMART, f"{ANNOTATION_VARIANT}=compat-smart"
    if handler == "wasm-smart":
        return Policy.SMART, f"{ANNOTATION_HANDLER}=wasm-smart"
    if variant == "compat":
        return Policy.ALL_WASM, f"{ANNOTATION_VARIANT}=compat"
    if handler == "wasm":
        return Policy.ALL_WASM, f"{ANNOTATION_HANDLER}=wasm"
    return Policy.AUTO, ""


def in_pod(annotations: Mapping[str, str]) -> bool:
    return ANNOTATION_CONTAINER_TYPE in annotations


def is_sandbox(annotations: Mapping[str, str]) -> bool:
    return annotations.get(ANNOTATION_CONTAINER_TYPE) == "sandbox"


def choose(
    annotations: Mapping[str, str], arg0: str, resolve: Callable[[], Entrypoint]
) -> tuple[Workload, Entrypoint | None]:
    """Decide how a container runs; `resolve` finds its wasm entrypoint (raising NotWasm)."""
    if is_sandbox(annotations):
        return Workload.NATIVE, None
    rule, named = policy(annotations)
    if rule is Policy.SMART and not arg0.split("#", 1)[0].endswith(WASM_SUFFIXES):
        return Workload.NATIVE, None
    try:
        return Workload.WASM, resolve()
    except NotWasm as e:
        if rule is Policy.ALL_WASM:
            raise FailedPrecondition(
                f"{e}: the annotation {named} makes every container of the pod wasm "
                "(use compat-smart or wasm-smart to run sidecars natively)"
            ) from None
        if rule is Policy.SMART:
            raise
        if in_pod(annotations):
            return Workload.NATIVE, None
        raise FailedPrecondition(
            f"{e}; outside a Kubernetes pod this runtime runs only wasm (use runc for native "
            "containers)"
        ) from None
