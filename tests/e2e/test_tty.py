"""Terminals through the real ``ctr``, as a person types them: in a tmux pane.

``ctr run -t`` and ``ctr task exec -t`` put their own terminal (the pane) in raw mode and
relay it to the shim, which gives the wasm guest the slave of a pseudo-terminal of its own
(shim/io/console.py). The guest (tests/wasm/c/tty.c) says whether wasi-libc's ``isatty``
holds for its stdin, stdout and stderr, echoes each line typed into the pane, and ends at
EOF (^D typed in the pane: the terminal's end-of-file, the pty in canonical mode) with exit
status 3, which ctr passes on. Everything the test reads is the pane's screen
(``capture-pane``); everything it types goes through ``send-keys``. Each test runs on the
venv's shim and on the shipped bundle (the ``bed`` fixture).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import RUNTIME, PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    ctr_run,
    describe,
    make_image,
    new_id,
    remove_container,
    task_status,
    tool_files,
    wait_for_status,
)
from tests.e2e.test_run_lifecycle import assert_no_leaks
from tests.prereq import require
from wasmtime_shim.images.build import ImageConfig

HANG_GUARD = 60.0  # seconds; only reached when what is under test is broken


class Pane:
    """One tmux session on a private server socket, running one shell command."""

    def __init__(self, socket: Path, command: str) -> None:
        tmux = shutil.which("tmux")
        require(tmux is not None, "tmux is not installed (make deps installs it)")
        assert tmux is not None
        self.base = [tmux, "-S", str(socket)]
        self._tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", command)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str) -> str:
        """The screen, once ``text`` is on it."""
        deadline = time.monotonic() + HANG_GUARD
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared; the pane shows:\n{screen}")
            time.sleep(0.1)

    def type(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30, check=False)


@pytest.fixture
def pane_socket(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "tmux.sock"
    yield sock
    base = [shutil.which("tmux") or "tmux", "-S", str(sock), "kill-server"]
    subprocess.run(base, capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    return make_image(
        tmp_path_factory.mktemp("tty"),
        tool_files("/bin"),
        ref="example.com/e2e/tty:latest",
        config=ImageConfig(env=("PATH=/bin",)),
    )


@pytest.fixture
def ref(bed: PrivateContainerd, bed_ns: str, image: TestImage) -> str:
    return image.import_into(bed, bed_ns)


def ctr_command(bed: PrivateContainerd, ns: str, *args: str) -> str:
    """A shell command running ctr, then printing its exit status, then waiting (so the
    pane, and what it shows, outlives ctr)."""
    argv = [str(bed.ctr_bin), "--address", str(bed.address), "--namespace", ns, *args]
    return f"{shlex.join(argv)}; echo ctr-exit=$?; sleep 600"


def converse(pane: Pane) -> str:
    """The dialogue with tests/wasm/c/tty.c, on a terminal; the screen once the client
    has exited."""
    pane.wait_for("isatty 0=1 1=1 2=1")
    pane.type("hello there", "Enter")
    pane.wait_for("echo: hello there")
    pane.type("C-d")  # the end-of-file character: the guest's fgets sees EOF
    screen = pane.wait_for("ctr-exit=")
    assert "bye" in screen, screen
    return screen


def test_ctr_run_t_gives_an_interactive_guest_a_terminal(
    bed: PrivateContainerd, bed_ns: str, ref: str, pane_socket: Path
) -> None:
    cid = new_id("tty")
    run = ("run", "-t", "--rm", "--runtime", RUNTIME, ref, cid, "/bin/tty.wasm")
    pane = Pane(pane_socket, ctr_command(bed, bed_ns, *run))
    try:
        assert "ctr-exit=3" in converse(pane)
    finally:
        pane.close()
        remove_container(bed, bed_ns, cid)
    assert_no_leaks(bed, bed_ns)


def test_ctr_task_exec_t_gets_a_terminal_while_the_init_runs(
    bed: PrivateContainerd, bed_ns: str, ref: str, pane_socket: Path
) -> None:
    ns, cid = bed_ns, new_id("tty-init")
    run = ctr_run(
        bed,
        ns,
        ref,
        "/bin/sleep.wasm",
        "3600",
        container_id=cid,
        rm=False,
        flags=("-d", "--null-io"),
    )
    assert run.returncode == 0, describe(bed, run)
    wait_for_status(bed, ns, cid, "RUNNING")
    pane = Pane(
        pane_socket,
        ctr_command(bed, ns, "task", "exec", "-t", "--exec-id", "t2", cid, "/bin/tty.wasm"),
    )
    try:
        assert "ctr-exit=3" in converse(pane)
        assert task_status(bed, ns, cid) == "RUNNING"
    finally:
        pane.close()
        remove_container(bed, ns, cid)
    assert_no_leaks(bed, ns)
