"""WAGI: a wasm container marked as an HTTP handler serves requests in its network namespace.

The handler is tests/wasm/c/wagi.c (clang + wasi-libc, built during the run). Each test
makes a network namespace of its own (tests/netns.py), runs the container detached in it
(`ctr run -d --with-ns network:<netns>`) with the switch as annotations (`ctr run
--annotation wasmtime.containerd.io/http=wagi ...`; one test uses the environment
instead), and talks to it from inside that namespace (`ip netns exec <ns> curl ...`, or
tests/httpload.py). Each test runs on the venv's shim and on the shipped bundle (`bed`),
since the server is the container process, which runs inside the bundle. One more test runs
it in a CRI pod of its own network namespace, driven as kubelet drives it (tests/cri.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import RUNTIME, WASMTIME_HANDLER, PrivateContainerd
from tests.cri import CriClient
from tests.e2e.helpers import (
    TestImage,
    describe,
    make_image,
    new_id,
    remove_container,
    task_pid,
    task_status,
    tool_files,
    wait_for_status,
)
from tests.e2e.test_run_lifecycle import assert_no_leaks, delete_task
from tests.netns import NetNs, private_netns
from tests.prereq import require
from wasmtime_shim.images.build import ImageConfig

PORT = 8080
TIMEOUT = 2  # the handlers' timeout (annotation), seconds
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    return make_image(
        tmp_path_factory.mktemp("wagi"),
        tool_files("/bin"),
        ref="example.com/e2e/wagi:latest",
        config=ImageConfig(entrypoint=("/bin/wagi.wasm",), env=("GREETING=hi",)),
    )


@pytest.fixture
def netns() -> Iterator[NetNs]:
    require(Path("/usr/sbin/ip").exists(), "ip is missing (Debian package iproute2)")
    with private_netns("wagi") as ns:
        yield ns


def annotations(**extra: str) -> list[str]:
    flags = ["--annotation", "wasmtime.containerd.io/http=wagi"]
    flags += ["--annotation", f"wasmtime.containerd.io/http-timeout={TIMEOUT}"]
    for key, value in extra.items():
        flags += ["--annotation", f"wasmtime.containerd.io/{key}={value}"]
    return flags


def start_server(
    bed: PrivateContainerd,
    ns: str,
    ref: str,
    netns: NetNs,
    log: Path,
    flags: list[str],
    args: tuple[str, ...] = (),
) -> str:
    """`ctr run -d` the handler in `netns` with stdout to `log`; returns the container id.
    Start returns once the server's socket is bound (it is bound before the process
    reports ready), so no wait is needed before the first request."""
    cid = new_id("wagi")
    result = bed.ctr(
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--with-ns",
        f"network:{netns.path}",
        "--log-uri",
        f"file://{log}",
        *flags,
        ref,
        cid,
        *args,
        namespace=ns,
        check=False,
    )
    if result.returncode != 0:
        remove_container(bed, ns, cid)
    assert result.returncode == 0, describe(bed, result)
    return cid


def run_once(
    bed: PrivateContainerd,
    ns: str,
    ref: str,
    flags: list[str],
    args: tuple[str, ...] = (),
    *,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """`ctr run --rm` in the foreground (``flags`` before the image, ``args`` after it);
    whatever its outcome, the container record is removed."""
    cid = new_id("once")
    result = bed.ctr(
        "run", "--rm", "--runtime", RUNTIME, *flags, ref, cid, *args,
        namespace=ns, check=False, timeout=timeout,
    )  # fmt: skip
    remove_container(bed, ns, cid)
    return result


def curl(netns: NetNs, *args: str) -> tuple[str, dict[str, str], bytes]:
    """`ip netns exec <ns> curl -si ARGS`: (status line, headers by lower-case name, body)."""
    out = subprocess.run(
        [
            "/usr/sbin/ip",
            "netns",
            "exec",
            netns.name,
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "30",
            *args,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def stop(bed: PrivateContainerd, ns: str, cid: str, signal: str = "SIGTERM") -> int:
    """Kill the task with `signal`, wait for it to stop; its exit status."""
    bed.ctr("task", "kill", "-s", signal, cid, namespace=ns)
    wait_for_status(bed, ns, cid, "STOPPED", timeout=TIMEOUT + 30)
    status = delete_task(bed, ns, cid)
    bed.ctr("container", "rm", cid, namespace=ns)
    return status


def url(path: str, port: int = PORT) -> str:
    return f"http://127.0.0.1:{port}{path}"


def test_wagi_serves_cgi_in_the_containers_network_namespace(
    bed: PrivateContainerd, bed_ns: str, image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    ref = image.import_into(bed, bed_ns)
    log = tmp_path / "stdout.log"
    cid = start_server(bed, bed_ns, ref, netns, log, annotations())
    try:
        status, headers, body = curl(netns, url("/hello"))
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == "text/plain"
        assert headers["x-handler"] == "wagi"
        assert body == b"hello from wagi\n"

        payload = "line one\nline two\n" * 100
        status, headers, body = curl(
            netns, "-X", "POST", "--data-binary", payload, "-H", "X-Test: yes", url("/echo?a=1&b=2")
        )
        assert status == "HTTP/1.1 201 Created"
        assert headers["x-method"] == "POST"
        assert headers["x-query"] == "a=1&b=2"
        assert headers["x-test"] == "yes"
        assert headers["x-length"] == str(len(payload))
        assert body == payload.encode()

        # A chunked upload (curl -T - sends no length) arrives whole as well.
        chunked = subprocess.run(
            ["/usr/sbin/ip", "netns", "exec", netns.name, "curl", "-sS", "-T", "-", url("/echo")],
            input=b"streamed body\n" * 1000,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert chunked.stdout == b"streamed body\n" * 1000, chunked.stderr

        status, headers, _ = curl(netns, url("/redirect"))
        assert status == "HTTP/1.1 302 Found"
        assert headers["location"] == "/hello"

        status, _, body = curl(netns, url("/env"))
        env = dict(line.split("=", 1) for line in body.decode().splitlines())
        assert env["GREETING"] == "hi"  # the container's own environment
        assert env["REQUEST_METHOD"] == "GET"
        assert env["PATH_INFO"] == "/env"
        assert env["SERVER_PORT"] == str(PORT)
        assert env["REMOTE_ADDR"] == "127.0.0.1"

        # The server is the container process, in the namespace the spec named.
        pid = task_pid(bed, bed_ns, cid)
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns.path).st_ino
    finally:
        status = stop(bed, bed_ns, cid) if _running(bed, bed_ns, cid) else None
        remove_container(bed, bed_ns, cid)
    assert status == 0, "SIGTERM should drain the server and end it with status 0"
    # The request log: one Common Log Format line per request, on the container's stdout.
    lines = log.read_text().splitlines()
    assert any(
        line.startswith("127.0.0.1 - - [") and line.endswith('"GET /hello HTTP/1.1" 200 16')
        for line in lines
    ), lines
    assert any('"POST /echo?a=1&b=2 HTTP/1.1" 201' in line for line in lines), lines
    assert_no_leaks(bed, bed_ns)


def _running(bed: PrivateContainerd, ns: str, cid: str) -> bool:
    return task_status(bed, ns, cid) == "RUNNING"


def wait_for_line(log: Path, text: str, timeout: float = 60.0) -> str:
    """The first line of the container's log (stdout and stderr) holding `text`, once it
    is there; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        found = next((line for line in lines if text in line), None)
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"no line with {text!r} in {log}: {lines}"
        time.sleep(0.1)


def load(netns: NetNs, path: str, requests: int, concurrency: int) -> dict[str, object]:
    out = netns.run(
        sys.executable,
        "-m",
        "tests.httpload",
        url(path),
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        timeout=300,
        cwd=str(REPO),  # `-m tests.httpload` is found from the repository's root
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_wagi_load_traps_timeouts_and_drain(
    bed: PrivateContainerd, bed_ns: str, image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    ref = image.import_into(bed, bed_ns)
    log = tmp_path / "stdout.log"
    cid = start_server(bed, bed_ns, ref, netns, log, annotations())
    try:
        result = load(netns, "/hello", 1000, 16)
        assert result["statuses"] == {"200": 1000} and result["errors"] == {}, result

        # A trap is that request's 500; the server goes on serving.
        status, _, body = curl(netns, url("/trap"))
        assert status == "HTTP/1.1 500 Internal Server Error", body
        status, _, body = curl(netns, url("/exit"))
        assert status == "HTTP/1.1 500 Internal Server Error" and b"status 3" in body
        status, _, _ = curl(netns, url("/garbage"))
        assert status == "HTTP/1.1 502 Bad Gateway"
        status, _, body = curl(netns, url("/hello"))
        assert status == "HTTP/1.1 200 OK" and body == b"hello from wagi\n"

        # A handler that never ends is interrupted at the timeout (504), and a SIGTERM
        # sent meanwhile lets it finish: the drain waits for it, then the task exits 0.
        answers: list[tuple[str, dict[str, str], bytes]] = []
        spinning = threading.Thread(target=lambda: answers.append(curl(netns, url("/spin"))))
        spinning.start()
        wait_for_line(log, "spinning")  # the program writes it once the request runs
        status_code = stop(bed, bed_ns, cid)
        spinning.join(timeout=60)
    finally:
        remove_container(bed, bed_ns, cid)
    assert status_code == 0
    assert answers and answers[0][0] == "HTTP/1.1 504 Gateway Timeout", answers
    assert_no_leaks(bed, bed_ns)


def test_wagi_switch_in_the_environment_and_sigkill(
    bed: PrivateContainerd, bed_ns: str, image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    """The per-container switch (env) with its own port; SIGKILL ends the server at once."""
    ref = image.import_into(bed, bed_ns)
    flags = ["--env", "WASMTIME_HTTP=wagi", "--env", "WASMTIME_HTTP_PORT=9090"]
    cid = start_server(bed, bed_ns, ref, netns, tmp_path / "stdout.log", flags)
    try:
        status, _, body = curl(netns, url("/hello", 9090))
        assert status == "HTTP/1.1 200 OK" and body == b"hello from wagi\n"
        code = stop(bed, bed_ns, cid, "SIGKILL")
    finally:
        remove_container(bed, bed_ns, cid)
    assert code == 137
    assert_no_leaks(bed, bed_ns)


def test_wagi_bad_switch_fails_create(
    bed: PrivateContainerd, bed_ns: str, image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    ref = image.import_into(bed, bed_ns)
    for flags, wanted in (
        (annotations(**{"http-port": "99999"}), "http-port"),
        (["--annotation", "wasmtime.containerd.io/http=cgi"], "must be `wagi`"),
        (["--annotation", "wasmtime.containerd.io/http=proxy"], "incoming-request"),
    ):
        result = run_once(bed, bed_ns, ref, ["--with-ns", f"network:{netns.path}", *flags])
        assert result.returncode != 0 and wanted in result.stderr, describe(bed, result)
    assert_no_leaks(bed, bed_ns)


def test_wagi_port_in_use_fails_start(
    bed: PrivateContainerd, bed_ns: str, image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    ref = image.import_into(bed, bed_ns)
    first = start_server(bed, bed_ns, ref, netns, tmp_path / "one.log", annotations())
    try:
        result = run_once(bed, bed_ns, ref, ["--with-ns", f"network:{netns.path}", *annotations()])
        assert result.returncode != 0, describe(bed, result)
        assert f"cannot serve HTTP on port {PORT}" in result.stderr, describe(bed, result)
        assert stop(bed, bed_ns, first) == 0
    finally:
        remove_container(bed, bed_ns, first)
    assert_no_leaks(bed, bed_ns)


def test_wagi_in_a_cri_pod_is_stopped_by_stopcontainer(
    cri_bed: tuple[PrivateContainerd, CriClient], crictl: CriClient, cri_wasm_image: str
) -> None:
    """As kubelet runs it: a pod with its own network namespace (tests/cni's fake network), a
    container whose env turns WAGI on; curl from the pod's namespace (nsenter into the
    sandbox's), the request log in the CRI log, and StopContainer's SIGTERM drains it to 0."""
    pod = crictl.run_pod("wagi", runtime_handler=WASMTIME_HANDLER, host_network=False)
    wasm = crictl.create_container(
        pod, "web", cri_wasm_image, command=["/bin/wagi.wasm"], env={"WASMTIME_HTTP": "wagi"}
    )
    crictl.start_container(wasm)
    pause = crictl.sandbox_pid(pod.id)
    got = subprocess.run(
        ["nsenter", "-t", str(pause), "-n", "curl", "-sS", "-i", "--max-time", "30", url("/hello")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), got.stdout
    assert got.stdout.endswith(b"\r\n\r\nhello from wagi\n"), got.stdout
    assert os.stat(f"/proc/{crictl.container_pid(wasm)}/ns/net").st_ino == (
        os.stat(f"/proc/{pause}/ns/net").st_ino
    )
    crictl.wait_for_log(wasm, '"GET /hello HTTP/1.1" 200 16', stream="stdout")
    crictl.stop_container(wasm, timeout=30)
    assert crictl.wait_exited(wasm).exit_code == 0
    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)


def test_wagi_requests_share_the_memory_limit(
    bed: PrivateContainerd, bed_ns: str, image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    """With a 256 MiB limit and 4 programs at once, each request's linear memory is capped at
    a quarter of what the limit leaves (the server says the cap on stderr): one request's
    malloc loop stops near that cap, not far below it (the concurrency setting, not the
    default 16, divides the headroom) and not above it; 4 such requests at once all answer
    and the process is not OOM-killed."""
    ref = image.import_into(bed, bed_ns)
    limit_mib = 256
    flags = [*annotations(**{"http-concurrency": "4"}), "--memory-limit", str(limit_mib << 20)]
    log = tmp_path / "stdout.log"
    cid = start_server(bed, bed_ns, ref, netns, log, flags)
    try:
        line = wait_for_line(log, "linear memory is capped at")
        share = int(line.split("capped at ")[1].split()[0])
        headroom = int(line.split("leaves ")[1].split()[0])
        assert share == headroom // 4, line  # the concurrency setting divides it
        assert headroom > (limit_mib << 20) // 2, line  # the share is most of limit / 4
        status, _, body = curl(netns, url("/grow"))
        assert status == "HTTP/1.1 200 OK", body
        grown = int(body)
        assert share * 3 // 4 <= grown << 20 < share, (grown, line)  # 1 MiB blocks

        answers: list[tuple[str, dict[str, str], bytes]] = []
        growing = [
            threading.Thread(target=lambda: answers.append(curl(netns, url("/grow"))))
            for _ in range(4)
        ]
        for thread in growing:
            thread.start()
        for thread in growing:
            thread.join(timeout=120)
        assert [a[0] for a in answers] == ["HTTP/1.1 200 OK"] * 4, answers
        assert all(share * 3 // 4 <= int(a[2]) << 20 < share for a in answers), answers
        status, _, body = curl(netns, url("/hello"))
        assert status == "HTTP/1.1 200 OK" and body == b"hello from wagi\n"
        assert task_status(bed, bed_ns, cid) == "RUNNING"
        code = stop(bed, bed_ns, cid)
    finally:
        remove_container(bed, bed_ns, cid)
    assert code == 0
    assert_no_leaks(bed, bed_ns)
