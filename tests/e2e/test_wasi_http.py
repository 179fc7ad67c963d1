"""wasi:http through the shim, with components built during the run by componentize-py
against the wasi:http WIT of the `wasmtime-wasi-http` crate (fetched with cargo):

- a wasi:http/proxy component is refused at Start with the reason it cannot be served, both
  as a plain container and marked as an HTTP handler;
- a wasi:cli command component makes an outgoing request (wasi:http/outgoing-handler) to a
  WAGI server in the same network namespace and prints the answer.

Only on the venv's shim: compiling the 18 MB component takes ~20 s per containerd (each has
its own cache), and the refusal is decided by runtimes/wasmtime/run.py, which both run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import PrivateContainerd
from tests.e2e.helpers import TestImage, describe, make_image, remove_container
from tests.e2e.test_run_lifecycle import assert_no_leaks
from tests.e2e.test_wagi import PORT, annotations, run_once, start_server, stop
from tests.netns import NetNs, private_netns
from tests.prereq import require
from tests.wasm import componentize
from wasmtime_shim.images.build import FileSource, ImageConfig

PROXY_WORLD = "wasi:http/proxy@0.2.12"
GET_WORLD = "test:http-get/get"  # tests/wasm/py/http_get/wit/world.wit


@pytest.fixture(scope="module")
def proxy_image(tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    problem = componentize.toolchain_problem()
    require(problem is None, problem or "")
    component = componentize.build("http_proxy", (PROXY_WORLD,))
    return make_image(
        tmp_path_factory.mktemp("proxy"),
        {"/app.wasm": component},
        ref="example.com/e2e/http-proxy:latest",
        config=ImageConfig(entrypoint=("/app.wasm",)),
    )


@pytest.fixture(scope="module")
def get_image(
    tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]
) -> TestImage:
    problem = componentize.toolchain_problem()
    require(problem is None, problem or "")
    files: dict[str, FileSource] = {"/app.wasm": componentize.build("http_get", (GET_WORLD,))}
    files["/bin/wagi.wasm"] = build_wasm("wagi")
    return make_image(
        tmp_path_factory.mktemp("get"),
        files,
        ref="example.com/e2e/http-get:latest",
        config=ImageConfig(entrypoint=("/app.wasm",)),
    )


@pytest.fixture
def netns() -> Iterator[NetNs]:
    with private_netns("proxy") as ns:
        yield ns


def test_proxy_component_is_refused_at_start_with_the_reason(
    containerd: PrivateContainerd, ns: str, proxy_image: TestImage, netns: NetNs
) -> None:
    ref = proxy_image.import_into(containerd, ns)
    for flags in (
        [],
        ["--annotation", "wasmtime.containerd.io/http=wagi", "--with-ns", f"network:{netns.path}"],
    ):
        result = run_once(containerd, ns, ref, flags, timeout=300)
        assert result.returncode != 0, describe(containerd, result)
        for words in (
            "/app.wasm",
            "wasi:http/incoming-handler",
            "incoming-request",
            "wasmtime's C API",
        ):
            assert words in result.stderr, describe(containerd, result)
    assert_no_leaks(containerd, ns)


def test_command_component_makes_outgoing_http_requests(
    containerd: PrivateContainerd, ns: str, get_image: TestImage, netns: NetNs, tmp_path: Path
) -> None:
    ref = get_image.import_into(containerd, ns)
    server = start_server(
        containerd, ns, ref, netns, tmp_path / "server.log", annotations(), ("/bin/wagi.wasm",)
    )
    try:
        flags = ["--with-ns", f"network:{netns.path}"]
        args = ("/app.wasm", f"http://127.0.0.1:{PORT}/hello")
        result = run_once(containerd, ns, ref, flags, args, timeout=300)
        assert result.returncode == 0, describe(containerd, result)
        assert result.stdout.replace("\r\n", "\n") == "200 hello from wagi\n\n", describe(
            containerd, result
        )
        assert stop(containerd, ns, server) == 0
    finally:
        remove_container(containerd, ns, server)
    assert_no_leaks(containerd, ns)
