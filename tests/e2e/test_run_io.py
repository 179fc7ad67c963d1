"""``ctr run`` through the shim: stdin, stdout/stderr, log URIs, null IO and bind mounts.

About stdin and ctr 1.6: ctr turns the EOF of its own stdin into a CloseIO call, but installs
that callback only after Create returns (containerd issue #4489). Input that is already
complete when ctr starts reaches EOF during Create, the CloseIO is lost, and a guest waiting
for EOF waits forever -- with runc too, since the runc shim also keeps its own write end of
the stdin FIFO. So the stdin test feeds ctr the way an interactive user does: a first chunk,
then (once it has come back, which proves the task started) the rest, then EOF.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from tests.containerd import PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    ctr_popen,
    ctr_run,
    describe,
    make_image,
    new_id,
    remove_container,
    run_args,
    tool_files,
)
from wasmtime_shim.images.build import ImageConfig

STREAM_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    """The C tools and a file; ``build_wasm`` makes a missing toolchain skip (CI: fail)."""
    files = tool_files("/bin") | {"/etc/motd": b"from the image\n"}
    return make_image(
        tmp_path_factory.mktemp("io"),
        files,
        ref="example.com/e2e/io:latest",
        config=ImageConfig(env=("PATH=/bin",)),
    )


@pytest.fixture
def ref(containerd: PrivateContainerd, ns: str, image: TestImage) -> str:
    return image.import_into(containerd, ns)


# ------------------------------------------------------------------ stdin


class Collector:
    """Reads a pipe to EOF on a thread; ``wait_for`` blocks until some bytes have arrived."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert isinstance(pipe, io.BufferedReader), "the process was not started with a pipe"
        self._pipe = pipe
        self._data = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := self._pipe.read1(65536):
            with self._cond:
                self._data += chunk
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, expected: bytes, timeout: float) -> bytes:
        """Wait until the data read so far starts with ``expected`` (or EOF / timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._data) < len(expected) and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return bytes(self._data)

    def result(self, timeout: float) -> bytes:
        self._thread.join(timeout)
        with self._cond:
            return bytes(self._data)


def test_piped_stdin_reaches_cat_and_eof_ends_it(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    first = b"first line\n"
    rest = b"".join(b"line %06d of the rest, with some padding\n" % i for i in range(6000))
    cid = new_id("cat")
    proc = ctr_popen(containerd, ns, *run_args(ref, cid, ["/bin/cat.wasm"]))
    assert proc.stdin is not None
    try:
        out = Collector(proc.stdout)
        err = Collector(proc.stderr)
        proc.stdin.write(first)
        proc.stdin.flush()
        echoed = out.wait_for(first, STREAM_TIMEOUT)
        assert echoed == first, f"echo {echoed!r}; stderr {err.result(0)!r}\n" + (
            containerd.log_tail(30)
        )
        proc.stdin.write(rest)
        proc.stdin.close()  # EOF: ctr calls CloseIO, the guest reads EOF and exits 0
        code = proc.wait(STREAM_TIMEOUT)
        stdout, stderr = out.result(STREAM_TIMEOUT), err.result(STREAM_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            remove_container(containerd, ns, cid)
    assert code == 0, f"exit {code}; stderr {stderr!r}\n" + containerd.log_tail(30)
    assert stdout == first + rest
    assert stderr == b""


def test_a_guest_that_ignores_piped_stdin_still_exits(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", "4", input="never read\n")
    assert run.returncode == 4, describe(containerd, run)
    assert run.stdout.startswith("hello from wasm\n")


# ------------------------------------------------------------------ stdout and stderr


def test_stdout_and_stderr_stay_apart(containerd: PrivateContainerd, ns: str, ref: str) -> None:
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/etc/motd")
    assert (run.returncode, run.stdout, run.stderr) == (0, "from the image\n", ""), describe(
        containerd, run
    )
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/etc/missing")
    assert run.returncode == 1, describe(containerd, run)
    assert run.stdout == ""
    assert run.stderr == "files: read /etc/missing: No such file or directory\n"


def test_log_uri_file_receives_the_output(
    containerd: PrivateContainerd, ns: str, ref: str, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "out.log"
    log.parent.mkdir()
    flags = ("--log-uri", f"file://{log}")
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", "6", "log me", flags=flags)
    assert run.returncode == 6, describe(containerd, run)
    assert run.stdout == ""
    assert (
        log.read_text() == "hello from wasm\nargv[0]=/bin/hello.wasm\nargv[1]=6\nargv[2]=log me\n"
    )


def test_log_uri_file_receives_stderr_too(
    containerd: PrivateContainerd, ns: str, ref: str, tmp_path: Path
) -> None:
    log = tmp_path / "err.log"
    flags = ("--log-uri", f"file://{log}")
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/nope", flags=flags)
    assert run.returncode == 1, describe(containerd, run)
    assert (run.stdout, run.stderr) == ("", "")
    assert log.read_text() == "files: read /nope: No such file or directory\n"


def test_null_io_discards_output_and_keeps_the_exit_code(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", "7", flags=("--null-io",))
    assert run.returncode == 7, describe(containerd, run)
    assert (run.stdout, run.stderr) == ("", "")


def test_null_io_gives_stdin_eof(containerd: PrivateContainerd, ns: str, ref: str) -> None:
    """cat under --null-io reads EOF at once (stdin is /dev/null), even though ctr's is a pipe."""
    run = ctr_run(
        containerd, ns, ref, "/bin/cat.wasm", flags=("--null-io",), input="not delivered\n"
    )
    assert (run.returncode, run.stdout) == (0, ""), describe(containerd, run)


# ------------------------------------------------------------------ bind mounts


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "greeting.txt").write_text("hello from the host\n")
    (data / "sub" / "deep.txt").write_text("deep\n")
    return data


def bind(src: Path, options: str) -> tuple[str, str]:
    return ("--mount", f"type=bind,src={src},dst=/data,options={options}")


def test_a_read_only_bind_mount_is_readable(
    containerd: PrivateContainerd, ns: str, ref: str, host_dir: Path
) -> None:
    flags = bind(host_dir, "rbind:ro")
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/data/greeting.txt", flags=flags)
    assert (run.returncode, run.stdout) == (0, "hello from the host\n"), describe(containerd, run)
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "list", "/data", flags=flags)
    assert (run.returncode, run.stdout) == (0, "greeting.txt\nsub\n"), describe(containerd, run)
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", "read", "/data/sub/deep.txt", flags=flags)
    assert (run.returncode, run.stdout) == (0, "deep\n"), describe(containerd, run)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["write", "/data/new.txt", "x"], id="create"),
        pytest.param(["write", "/data/greeting.txt", "x"], id="overwrite"),
        pytest.param(["append", "/data/greeting.txt", "x"], id="append"),
        pytest.param(["mkdir", "/data/newdir"], id="mkdir"),
        pytest.param(["rm", "/data/greeting.txt"], id="unlink"),
    ],
)
def test_a_read_only_bind_mount_refuses_writes(
    containerd: PrivateContainerd, ns: str, ref: str, host_dir: Path, argv: list[str]
) -> None:
    run = ctr_run(containerd, ns, ref, "/bin/files.wasm", *argv, flags=bind(host_dir, "rbind:ro"))
    assert run.returncode == 1, describe(containerd, run)
    assert run.stderr.startswith(f"files: {argv[0]} {argv[1]}: "), describe(containerd, run)
    assert sorted(p.name for p in host_dir.iterdir()) == ["greeting.txt", "sub"]
    assert (host_dir / "greeting.txt").read_text() == "hello from the host\n"


def test_a_read_write_bind_mount_writes_through_to_the_host(
    containerd: PrivateContainerd, ns: str, ref: str, host_dir: Path
) -> None:
    flags = bind(host_dir, "rbind:rw")

    def files(*argv: str) -> subprocess.CompletedProcess[str]:
        run = ctr_run(containerd, ns, ref, "/bin/files.wasm", *argv, flags=flags)
        assert run.returncode == 0, describe(containerd, run)
        return run

    files("write", "/data/new.txt", "written by the guest\n")
    assert (host_dir / "new.txt").read_text() == "written by the guest\n"
    files("append", "/data/greeting.txt", "and more\n")
    assert (host_dir / "greeting.txt").read_text() == "hello from the host\nand more\n"
    files("mkdir", "/data/made")
    assert (host_dir / "made").is_dir()
    files("write", "/data/made/inner.txt", "inner")
    assert (host_dir / "made" / "inner.txt").read_text() == "inner"
    files("rm", "/data/sub/deep.txt")
    assert not (host_dir / "sub" / "deep.txt").exists()
    # and a file the host writes now is what the next guest reads
    (host_dir / "late.txt").write_text("written by the host later\n")
    assert files("read", "/data/late.txt").stdout == "written by the host later\n"


def test_a_bind_mount_does_not_expose_the_rest_of_the_host(
    containerd: PrivateContainerd, ns: str, ref: str, host_dir: Path
) -> None:
    """``..`` from the mount stays inside the container: the host dir's siblings are unseen."""
    (host_dir.parent / "secret.txt").write_text("host secret\n")
    flags = bind(host_dir, "rbind:rw")
    run = ctr_run(
        containerd, ns, ref, "/bin/files.wasm", "read", "/data/../secret.txt", flags=flags
    )
    assert run.returncode == 1, describe(containerd, run)
    assert "host secret" not in run.stdout
    with contextlib.suppress(OSError):
        (host_dir.parent / "secret.txt").unlink()
