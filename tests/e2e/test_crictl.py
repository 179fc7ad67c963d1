"""The real ``crictl`` against the CRI test bed's ``wasmtime`` handler, as a person drives
kubelet's side by hand: runp, create, start, logs, inspect, stats, exec, stop, rm, stopp, rmp,
with the pod and container configs written here as the JSON files crictl reads.

Exec goes both ways kubelet's does: ``exec -s`` is the ExecSync RPC (the output comes back
in the reply), plain ``exec`` streams through containerd's stream server (tests/containerd.py
binds it to 127.0.0.1 on a free port), and ``exec -t`` asks for a terminal. Each goes into a
wasm container (tests/wasm/c: hello, tty) and into a native sidecar of the same pod
(tests/pause/sidecar.c ``--once``, run by ``runc exec``), and the exit codes come back; the
terminal ones (``-it``) run crictl in a tmux pane, as tests/e2e/test_tty.py does.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containerd import WASMTIME_HANDLER, PrivateContainerd
from tests.cri import CriClient
from tests.crictl import CRICTL, Crictl
from tests.e2e.test_tty import Pane, converse, pane_socket  # noqa: F401 (a fixture)
from tests.pause import build as native
from tests.prereq import require

Bed = tuple[PrivateContainerd, CriClient]
NODE = 2  # CRI NamespaceMode NODE: the pod shares the host's network


@pytest.fixture(scope="module")
def crictl_binary() -> Path:
    problem = CRICTL.problem()
    require(problem is None, problem or "")
    return CRICTL.build()  # a failed build fails the test: go is there, so it must work


@pytest.fixture
def cli(crictl_binary: Path, cri_bed: Bed, crictl: CriClient, tmp_path: Path) -> Iterator[Crictl]:
    """crictl on the test bed's socket; the ``crictl`` fixture removes what a failed test left."""
    yield Crictl(crictl_binary, cri_bed[0].address, tmp_path / "crictl-home")


def ok(cli: Crictl, *args: str) -> str:
    done = cli.run(*args)
    assert done.returncode == 0, f"crictl {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done.stdout.strip()


def on_terminal(cli: Crictl, socket: Path, *args: str) -> Pane:
    """crictl in a tmux pane (its stdin a terminal, as ``-it`` wants), then its exit status
    (printed as ``ctr-exit=N``, the form test_tty's ``converse`` reads)."""
    cli.run("version")  # writes its config file
    return Pane(socket, f"{shlex.join(cli.argv(*args))}; echo ctr-exit=$?; sleep 600")


def write_json(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_crictl_drives_a_wasm_pod_with_a_native_sidecar(
    cli: Crictl,
    crictl: CriClient,
    cri_wasm_image: str,
    tmp_path: Path,
    pane_socket: Path,  # noqa: F811
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    pod_json = write_json(
        tmp_path / "pod.json",
        {
            "metadata": {"name": "crictl", "namespace": "default", "uid": uuid.uuid4().hex},
            "log_directory": str(logs),
            "linux": {"security_context": {"namespace_options": {"network": NODE}}},
        },
    )
    pod = ok(cli, "runp", "--runtime", WASMTIME_HANDLER, pod_json)
    try:
        wasm_json = write_json(
            tmp_path / "wasm.json",
            {
                "metadata": {"name": "wasm"},
                "image": {"image": cri_wasm_image},
                "command": ["/bin/sleep.wasm"],
                "log_path": "wasm.log",
            },
        )
        side_json = write_json(
            tmp_path / "side.json",
            {
                "metadata": {"name": "side"},
                "image": {"image": native.SIDECAR_IMAGE},
                "log_path": "side.log",
            },
        )
        wasm = ok(cli, "create", pod, wasm_json, pod_json)
        side = ok(cli, "create", pod, side_json, pod_json)
        ok(cli, "start", wasm)
        ok(cli, "start", side)
        crictl.wait_for_log(wasm, "sleeping 3600")
        crictl.wait_for_log(side, "netns net:")
        assert "sleeping 3600" in ok(cli, "logs", wasm)
        info = json.loads(ok(cli, "inspect", wasm))
        assert info["status"]["state"] == "CONTAINER_RUNNING", info["status"]
        stats = json.loads(ok(cli, "stats", "-o", "json", "--id", wasm))
        assert [s["attributes"]["id"] for s in stats["stats"]] == [wasm], stats

        # Exec into the wasm container: sync, streamed, with a terminal; exit codes.
        sync = cli.run("exec", "-s", wasm, "/bin/hello.wasm", "0")
        assert sync.returncode == 0, sync.stderr
        # crictl prints the reply's stdout, then its own line ends
        assert sync.stdout.rstrip("\n") == "hello from wasm\nargv[0]=/bin/hello.wasm\nargv[1]=0"
        failed = cli.run("exec", "-s", wasm, "/bin/hello.wasm", "5")
        assert failed.returncode != 0 and "exited with 5" in failed.stderr, failed.stderr
        streamed = cli.run("exec", wasm, "/bin/hello.wasm", "0", "streamed")
        assert streamed.returncode == 0, streamed.stderr
        assert "argv[2]=streamed" in streamed.stdout, streamed.stdout
        pane = on_terminal(cli, pane_socket, "exec", "-it", wasm, "/bin/tty.wasm")
        screen = converse(pane)  # crictl names the exit code and exits 1
        pane.close()
        assert "exit code 3" in screen, screen

        # Exec into the native sidecar (runc exec): sync, streamed, with a terminal.
        sync = cli.run("exec", "-s", side, "/sidecar", "--once", "0", "sync")
        # crictl prints the reply's stdout, a line end, its stderr, a line end: the two
        # streams came back apart
        assert (sync.returncode, sync.stdout) == (0, "once sync tty=00\n\nonce: stderr\n\n")
        failed = cli.run("exec", "-s", side, "/sidecar", "--once", "4", "sync")
        assert failed.returncode != 0 and "exited with 4" in failed.stderr, failed.stderr
        streamed = cli.run("exec", side, "/sidecar", "--once", "0", "streamed")
        assert (streamed.returncode, streamed.stdout) == (0, "once streamed tty=00\n")
        pane = on_terminal(cli, pane_socket, "exec", "-it", side, "/sidecar", "--once", "3", "t")
        screen = pane.wait_for("ctr-exit=")
        pane.close()
        # the pane's size, sent by crictl as a resize: ResizePty on runc's terminal
        assert "once t tty=11 size=120x40" in screen and "exit code 3" in screen, screen

        assert json.loads(ok(cli, "inspect", side))["status"]["state"] == "CONTAINER_RUNNING"

        # Containers with a terminal (tty: true): the shim's pty for wasm, runc's (through
        # the console socket) for the sidecar; CRI logs what the terminal carried.
        wasm_tty_json = write_json(
            tmp_path / "wasm-tty.json",
            {
                "metadata": {"name": "wasm-tty"},
                "image": {"image": cri_wasm_image},
                "command": ["/bin/tty.wasm"],
                "tty": True,
                "log_path": "wasm-tty.log",
            },
        )
        side_tty_json = write_json(
            tmp_path / "side-tty.json",
            {
                "metadata": {"name": "side-tty"},
                "image": {"image": native.SIDECAR_IMAGE},
                "command": ["/sidecar", "--once", "0", "init"],
                "tty": True,
                "log_path": "side-tty.log",
            },
        )
        wasm_tty = ok(cli, "create", pod, wasm_tty_json, pod_json)
        side_tty = ok(cli, "create", pod, side_tty_json, pod_json)
        ok(cli, "start", wasm_tty)
        ok(cli, "start", side_tty)
        crictl.wait_for_log(wasm_tty, "isatty 0=1 1=1 2=1")
        crictl.wait_for_log(side_tty, "once init tty=11")
        assert crictl.wait_exited(side_tty).exit_code == 0

        containers = (wasm, side, wasm_tty)
        for c in containers:
            ok(cli, "stop", c)
        states = {json.loads(ok(cli, "inspect", c))["status"]["state"] for c in containers}
        assert states == {"CONTAINER_EXITED"}
        ok(cli, "rm", *containers, side_tty)
        assert ok(cli, "ps", "-a", "-q", "--pod", pod) == ""
        ok(cli, "stopp", pod)
        ok(cli, "rmp", pod)
        assert ok(cli, "pods", "-q", "--id", pod) == ""
    finally:
        cli.run("rmp", "-f", pod)
