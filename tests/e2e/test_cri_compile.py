"""A long compile under kubelet's StartContainer deadline (README "Processes": compilation).

kubelet gives StartContainer a deadline (2 minutes); a big module on a busy node can take
longer to compile. Here a generated module that takes seconds to compile meets a deadline of
half a second: StartContainer fails, containerd kills and deletes the task, but the warm
runtime's compile job goes on and leaves its entry in the cache, so kubelet's retry (a new
container) starts without compiling again: the runtime's log shows one compile, and the
retry's compile job found the entry.
"""

from __future__ import annotations

import functools
import random
import re
import time
from pathlib import Path

import grpc
import pytest
import wasmtime

from runtimes.base import EntrypointKind
from runtimes.wasmtime.engine import load_source
from shim.warm import protocol
from tests.cri import CONTAINER_EXITED, CriClient, CriError
from tests.e2e.helpers import make_image, salted
from tests.e2e.test_cri_wasm import Bed, wasm_pod
from wasmtime_shim.images.build import ImageConfig

CACHE = Path("/var/lib/containerd-shim-wasmtime/cache")
REF = "localhost/cri-wasm/big-compile:1"


@functools.cache
def big_module(seed: int = 9) -> bytes:
    """A module whose compile takes seconds (4 functions, each thousands of locals kept
    alive by stores); it exits 0 at once when run. The same seed gives the same bytes."""
    rng = random.Random(seed)
    funcs = []
    for f in range(4):
        locals_ = " ".join(f"(local $l{i} i64)" for i in range(8000))
        body = []
        for k in range(150_000):
            a, b, c = rng.randrange(8000), rng.randrange(8000), rng.randrange(8000)
            body.append(
                f"(local.set $l{c} (i64.add (local.get $l{a}) (i64.mul (local.get $l{b}) "
                f"(i64.const {k})))) (i64.store (i32.wrap_i64 (i64.and (local.get $l{a}) "
                f"(i64.const 1023))) (local.get $l{c}))"
            )
        funcs.append(f"(func $f{f} (result i64) {locals_} {' '.join(body)} (local.get $l0))")
    wat = "(module (memory 1) " + " ".join(funcs) + ' (func (export "_start")))'
    return bytes(wasmtime.wat2wasm(wat))


def test_a_start_deadline_during_a_long_compile_keeps_the_compile_and_the_retry_starts(
    cri_bed: Bed, crictl: CriClient, tmp_path: Path
) -> None:
    containerd = cri_bed[0]
    wasm = salted(big_module())  # a key no earlier compile has an entry for
    key = load_source(wasm, EntrypointKind.MODULE, "").key
    image = make_image(
        tmp_path, {"/big.wasm": wasm}, ref=REF, config=ImageConfig(entrypoint=("/big.wasm",))
    )
    containerd.import_image(image.archive, namespace="k8s.io")
    crictl.wait_image(REF)
    try:
        pod = wasm_pod(crictl, "compile")
        first = crictl.create_container(pod, "big", REF)
        with pytest.raises(CriError) as failed:
            crictl.start_container(first, timeout=0.5)
        assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value

        deadline = time.monotonic() + 300
        while not list((CACHE / key[:2]).glob(key + "-*.cwasm")):
            assert time.monotonic() < deadline, "the compile did not outlive the deadline"
            time.sleep(0.2)
        crictl.wait_container_state(first, CONTAINER_EXITED)
        crictl.remove_container(first)

        retry = crictl.create_container(pod, "big", REF, attempt=1)
        crictl.start_container(retry)
        status = crictl.wait_exited(retry)
        assert status.exit_code == 0, status

        log = Path(protocol.control_path(str(containerd.address), ".log")).read_text()
        compiles = re.findall(r"compile /big\.wasm: (.*)", log)
        assert sum("compiled in" in line for line in compiles) == 1, compiles
        crictl.stop_pod(pod.id)
        crictl.remove_pod(pod.id)
    finally:
        containerd.ctr("images", "rm", "--sync", REF, namespace="k8s.io", check=False)
