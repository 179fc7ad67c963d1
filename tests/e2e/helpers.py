"""Shared helpers for the end-to-end tests that drive the shim through containerd and ``ctr``.

Images: a test module builds its image archives once (``make_image``, usually in a
module-scoped fixture) and imports them into each test's fresh namespace (``TestImage.
import_into``, ~0.15 s), so every test keeps the ``ns`` fixture's per-namespace leak check
while nothing is rebuilt. ``tool_files()`` is the standard content: every C test program at
``/bin/<name>.wasm``.

Runs: ``ctr_run`` is ``ctr run [--rm] --runtime io.containerd.wasmtime.v1 FLAGS REF ID ARGS``
with a fresh container id; ``ctr_popen`` starts ctr without waiting (for tests that feed its
stdin while it runs). Detached containers are cleaned with ``remove_container``.

Every helper that fails raises with ctr's output and the tail of containerd's log (where the
shim logs too), because an end-to-end failure is useless without the shim's side of it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from tests.containerd import RUNTIME, PrivateContainerd
from tests.wasm import build
from wasmtime_shim.images.build import FileSource, ImageConfig, build_image

WAT_DIR = Path(__file__).resolve().parents[1] / "wasm" / "wat"
DEFAULT_TIMEOUT = 60.0

_ids = itertools.count(1)


# ------------------------------------------------------------------ images


@dataclass(frozen=True, slots=True)
class TestImage:
    """An image archive written once; import it into as many namespaces as needed."""

    __test__ = False  # not a pytest test class, despite the name

    ref: str
    archive: Path

    def import_into(self, containerd: PrivateContainerd, namespace: str) -> str:
        """``ctr image import`` into ``namespace``; returns the ref to pass to ``ctr run``."""
        containerd.import_image(self.archive, namespace=namespace)
        return self.ref


def make_image(
    directory: Path,
    files: Mapping[str, FileSource],
    *,
    ref: str,
    config: ImageConfig | None = None,
) -> TestImage:
    """Build a one-layer wasm image from ``{path in image: content}`` into ``directory``."""
    image = build_image(files, ref=ref, config=config)
    name = ref.replace("/", "_").replace(":", "_") + ".tar"
    return TestImage(ref=ref, archive=image.write(directory / name))


def salted(module: bytes) -> bytes:
    """``module`` plus a custom section holding a fresh uuid: the same program under a
    compile-cache key nothing else shares (the cache is the node's: an earlier run, the
    other shim build, or a concurrent run on the machine may hold or repair an entry of
    the unsalted bytes, which a test about compiling or damaged entries must not meet)."""
    name, payload = b"salt", uuid.uuid4().hex.encode()
    body = bytes([len(name)]) + name + payload
    return module + bytes([0, len(body)]) + body  # section id 0, size < 128: one LEB byte


def c_program(name: str) -> Path:
    """The compiled module of ``tests/wasm/c/<name>.c`` (built once, cached by source hash)."""
    return build.build_c(name)


def tool_files(prefix: str = "/bin") -> dict[str, FileSource]:
    """Every C test program at ``<prefix>/<name>.wasm``: hello, env, cat, files, sleep, ..."""
    return {f"{prefix}/{name}.wasm": c_program(name) for name in build.programs()}


def wat_text(name: str) -> bytes:
    """The text of ``tests/wasm/wat/<name>.wat`` (to ship as a ``.wat`` entrypoint)."""
    return (WAT_DIR / f"{name}.wat").read_bytes()


def wat_binary(name: str) -> bytes:
    """``tests/wasm/wat/<name>.wat`` compiled to binary (a core module or a component)."""
    return wasmtime.wat2wasm(wat_text(name).decode())


# ------------------------------------------------------------------ running


def new_id(prefix: str = "c") -> str:
    """A container id unique within this test process."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def run_args(
    ref: str,
    container_id: str,
    args: Sequence[str],
    *,
    flags: Sequence[str] = (),
    rm: bool = True,
) -> list[str]:
    """The ``ctr run`` argument list (after ``ctr --address .. --namespace ..``)."""
    return [
        "run",
        *(["--rm"] if rm else []),
        "--runtime",
        RUNTIME,
        *flags,
        ref,
        container_id,
        *args,
    ]


def ctr_run(
    containerd: PrivateContainerd,
    namespace: str,
    ref: str,
    *args: str,
    flags: Sequence[str] = (),
    container_id: str | None = None,
    rm: bool = True,
    input: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``ctr run [--rm] --runtime <ours> FLAGS REF ID ARGS``; never raises on a non-zero exit.

    Its exit code is the guest's; check it with ``describe`` in the assertion message.
    """
    cid = container_id or new_id()
    return containerd.ctr(
        *run_args(ref, cid, args, flags=flags, rm=rm),
        namespace=namespace,
        check=False,
        timeout=timeout,
        input=input,
    )


def ctr_popen(containerd: PrivateContainerd, namespace: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``ctr --address <ours> --namespace NS ARGS`` with stdin/stdout/stderr as pipes.

    The caller owns the process: it must wait for it (or kill it) in a ``finally``.
    """
    cmd = [
        str(containerd.ctr_bin),
        "--address",
        str(containerd.address),
        "--namespace",
        namespace,
        *args,
    ]
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def describe(containerd: PrivateContainerd, result: subprocess.CompletedProcess[str]) -> str:
    """ctr's command, exit code, output and containerd's log tail, for an assertion message."""
    args = result.args if isinstance(result.args, list) else [str(result.args)]
    return (
        f"$ {' '.join(map(str, args))}\nexit {result.returncode}\n"
        f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}\n" + containerd.log_tail(30)
    )


# ------------------------------------------------------------------ tasks and containers


def task_status(containerd: PrivateContainerd, namespace: str, container_id: str) -> str | None:
    """The STATUS column of ``ctr task ls`` for the task (RUNNING, STOPPED, ...), or None."""
    table = containerd.ctr("task", "ls", namespace=namespace, timeout=20).stdout
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == container_id:
            return fields[2]
    return None


def task_pid(containerd: PrivateContainerd, namespace: str, container_id: str) -> int:
    """The PID column of ``ctr task ls`` for the task (raises if it is not listed)."""
    table = containerd.ctr("task", "ls", namespace=namespace, timeout=20).stdout
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"task {container_id} not in `ctr task ls`:\n{table}")


def wait_for_status(
    containerd: PrivateContainerd,
    namespace: str,
    container_id: str,
    wanted: str,
    timeout: float = 30.0,
) -> None:
    """Poll ``ctr task ls`` until the task has status ``wanted``; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = task_status(containerd, namespace, container_id)
        if status == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"task {container_id} is {status}, not {wanted}, after {timeout}s\n"
        + containerd.log_tail(30)
    )


def container_spec(
    containerd: PrivateContainerd, namespace: str, container_id: str
) -> dict[str, Any]:
    """The OCI spec containerd stored for the container (``ctr containers info``)."""
    info = json.loads(
        containerd.ctr("containers", "info", container_id, namespace=namespace).stdout
    )
    spec = info["Spec"]
    assert isinstance(spec, dict)
    return spec


def remove_container(containerd: PrivateContainerd, namespace: str, container_id: str) -> None:
    """Best effort: SIGKILL the task, delete it and the container (for ``finally`` blocks)."""
    if task_status(containerd, namespace, container_id) not in (None, "STOPPED"):
        containerd.ctr(
            "task", "kill", "-s", "SIGKILL", container_id, namespace=namespace, check=False
        )
        with contextlib.suppress(AssertionError):
            wait_for_status(containerd, namespace, container_id, "STOPPED", timeout=15)
    containerd.ctr("task", "delete", "-f", container_id, namespace=namespace, check=False)
    containerd.ctr("containers", "delete", container_id, namespace=namespace, check=False)


# ------------------------------------------------------------------ shim processes


def shim_pids(containerd: PrivateContainerd, container_id: str) -> list[int]:
    """PIDs of the processes running as the shim for ``container_id`` (daemon, spawner, ...).

    Found the way PrivateContainerd finds leaks: ``-address <our socket>`` and ``-id <id>``
    in the command line.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        pairs = set(itertools.pairwise(argv))
        if ("-address", str(containerd.address)) in pairs and ("-id", container_id) in pairs:
            found.append(int(proc.name))
    return sorted(found)


def process_environ(pid: int) -> dict[str, str]:
    """``/proc/<pid>/environ`` as a dict (raises OSError if the process is gone)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}
