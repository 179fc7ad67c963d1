"""shim/io with real FIFOs, files, pipes and child processes (/bin/sh stands in for a guest).

Each test plays containerd's client: it makes the FIFOs and opens its ends the way ``ctr`` does
(read ends before Create), then forks a child onto ``child_fds()`` as the spawner would. Every
test that opens descriptors checks at the end that the process holds exactly the descriptors it
held before. Reads are guarded by a generous deadline only so that a bug fails instead of
hanging the run; nothing asserts on timing.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from shim.io import ProcessIO, StdioConfig, fds
from shim.io.uri import Scheme, Target, parse, plan
from tests import binary_logger

HANG_GUARD = 20.0  # seconds; only ever reached when the code under test is broken


def open_fds() -> set[str]:
    """This process's descriptors and what they are, but eventfds: a gRPC channel a session
    fixture holds (the CRI client) makes and drops those on its own threads at any time."""
    found = {f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}" for fd in _fd_numbers()}
    return {entry for entry in found if not entry.endswith("anon_inode:[eventfd]")}


def _fd_numbers() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listdir's own descriptor
            continue
        fds.append(int(name))
    return fds


@pytest.fixture
def fd_guard() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before


@dataclass
class Client:
    """The client side of the three FIFOs, as containerd's cio sets them up."""

    dir: Path
    stdin: str
    stdout: str
    stderr: str
    out_r: int
    err_r: int
    in_w: int = -1

    def config(self, *, stdin: bool = True) -> StdioConfig:
        return StdioConfig(self.stdin if stdin else "", self.stdout, self.stderr)

    def open_stdin(self) -> int:
        # Blocking open like a real client; the shim's read end already exists.
        self.in_w = os.open(self.stdin, os.O_WRONLY | os.O_CLOEXEC)
        return self.in_w

    def close(self) -> None:
        for fd in (self.out_r, self.err_r, self.in_w):
            if fd >= 0:
                os.close(fd)
        self.out_r = self.err_r = self.in_w = -1


@pytest.fixture
def client(tmp_path: Path, fd_guard: None) -> Iterator[Client]:
    paths = {}
    for name in ("stdin", "stdout", "stderr"):
        paths[name] = str(tmp_path / f"ctr-{name}")
        os.mkfifo(paths[name])
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    c = Client(
        tmp_path,
        **paths,
        out_r=os.open(paths["stdout"], flags),
        err_r=os.open(paths["stderr"], flags),
    )
    yield c
    c.close()


def read_to_eof(fd: int) -> bytes:
    """Everything until EOF (all writers gone)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + HANG_GUARD
    data = b""
    while True:
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            pytest.fail(f"no EOF after reading {data!r}")
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return data
        data += chunk


def read_until(fd: int, end: bytes) -> bytes:
    """What ``fd`` gives until it ends with ``end`` (a hang guard fails the test)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + HANG_GUARD
    data = b""
    while not data.endswith(end):
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            pytest.fail(f"no {end!r} after reading {data!r}")
        try:
            data += os.read(fd, 1)
        except BlockingIOError:
            continue
    return data


def spawn(pio: ProcessIO, script: str) -> subprocess.Popen[bytes]:
    """Fork a child onto child_fds() (Popen dup2()s them), then hand over as the shim does."""
    fds = pio.child_fds()
    child = subprocess.Popen(["/bin/sh", "-c", script], stdin=fds[0], stdout=fds[1], stderr=fds[2])
    pio.started()
    return child


def exit_code(child: subprocess.Popen[bytes]) -> int:
    """The child's exit status; a child that never exits is a failure (and is killed)."""
    try:
        return child.wait(HANG_GUARD)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        pytest.fail("the child did not exit (no EOF on its stdin?)")


def run_bounded(fn: object) -> object:
    """Call ``fn`` in a thread; fail instead of hanging if it never returns. What it raised
    is raised here."""
    result: list[object] = []
    failure: list[BaseException] = []

    def call() -> None:
        try:
            result.append(fn())  # type: ignore[operator]
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), "blocked"
    if failure:
        raise failure[0]
    return result[0]


# -- FIFOs ----------------------------------------------------------------------------


def test_output_reaches_the_client_and_eof_follows_the_exit(client: Client) -> None:
    pio = ProcessIO.open(client.config(stdin=False), container_id="c", namespace="ns")
    child = spawn(pio, "echo out; echo err >&2")
    assert read_to_eof(client.out_r) == b"out\n"
    assert read_to_eof(client.err_r) == b"err\n"
    assert exit_code(child) == 0
    pio.close()


def test_no_eof_while_our_copies_are_open(client: Client) -> None:
    """started() is what lets the child's exit become the client's EOF."""
    pio = ProcessIO.open(client.config(stdin=False), container_id="c", namespace="ns")
    fds = pio.child_fds()
    child = subprocess.Popen(["/bin/sh", "-c", "echo out"], stdout=fds[1], stderr=fds[2])
    assert exit_code(child) == 0
    assert os.read(client.out_r, 100) == b"out\n"
    with pytest.raises(BlockingIOError):  # a writer (ours) is still there: no EOF
        os.read(client.out_r, 100)
    pio.started()
    assert read_to_eof(client.out_r) == b""
    pio.close()


def test_a_departed_client_does_not_break_the_guests_writes(client: Client) -> None:
    pio = ProcessIO.open(client.config(stdin=False), container_id="c", namespace="ns")
    client.close()  # ctr killed: nobody reads any more
    marker = client.dir / "survived"
    child = spawn(pio, f"echo out && echo err >&2 && echo again && touch {marker}")
    assert exit_code(child) == 0  # a SIGPIPE death would be -13, an EPIPE failure 1
    assert marker.exists()
    pio.close()


def test_stdin_reaches_the_child_and_close_stdin_gives_eof(client: Client) -> None:
    pio = ProcessIO.open(client.config(), container_id="c", namespace="ns")
    child = spawn(pio, "cat")
    os.write(client.open_stdin(), b"hello\n")
    pio.close_stdin()  # the client still holds its write end
    assert read_to_eof(client.out_r) == b"hello\n"
    assert exit_code(child) == 0
    pio.close()


def test_create_does_not_wait_for_the_client(tmp_path: Path, fd_guard: None) -> None:
    """Nobody has opened any end: neither the stdin writer nor the stdout/stderr readers."""
    for name in ("in", "out", "err"):
        os.mkfifo(tmp_path / name)
    cfg = StdioConfig(str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "err"))
    pio = run_bounded(lambda: ProcessIO.open(cfg, container_id="c", namespace="ns"))
    assert isinstance(pio, ProcessIO)
    child = spawn(pio, "cat; echo done")
    pio.close_stdin()
    assert exit_code(child) == 0  # the output went into our read ends without EPIPE
    pio.close()


def test_a_client_may_detach_and_reattach_stdin(client: Client) -> None:
    """Only CloseIO ends stdin: a client closing its write end is not EOF for the guest."""
    pio = ProcessIO.open(client.config(), container_id="c", namespace="ns")
    child = spawn(pio, "cat")
    os.write(client.open_stdin(), b"first ")
    os.close(client.in_w)
    os.write(client.open_stdin(), b"second\n")
    os.close(client.in_w)
    client.in_w = -1
    assert child.poll() is None
    pio.close_stdin()
    assert read_to_eof(client.out_r) == b"first second\n"
    assert exit_code(child) == 0
    pio.close()


def test_data_written_before_start_is_delivered(client: Client) -> None:
    pio = ProcessIO.open(client.config(), container_id="c", namespace="ns")
    os.write(client.open_stdin(), b"early\n")
    pio.close_stdin()
    child = spawn(pio, "cat")
    assert read_to_eof(client.out_r) == b"early\n"
    assert exit_code(child) == 0
    pio.close()


def test_close_tears_down_a_running_stdin_copy(client: Client) -> None:
    """Delete without CloseIO, while the copier waits on a child that never reads."""
    pio = ProcessIO.open(client.config(), container_id="c", namespace="ns")
    child = spawn(pio, "sleep 600")
    writer = client.open_stdin()
    os.set_blocking(writer, False)
    with pytest.raises(BlockingIOError):  # fill the FIFO and our pipe behind it
        while True:
            os.write(writer, b"x" * 65536)
    run_bounded(pio.close)
    child.kill()
    child.wait()


# -- files ----------------------------------------------------------------------------


def test_file_uri_appends_both_streams_across_runs(tmp_path: Path, fd_guard: None) -> None:
    log = tmp_path / "new" / "dirs" / "ctr.log"
    uri = f"file://{log}"
    for run in ("1", "2"):
        pio = ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="ns")
        assert exit_code(spawn(pio, f"echo out{run}; echo err{run} >&2")) == 0
        pio.close()
    assert log.read_text() == "out1\nerr1\nout2\nerr2\n"


def test_a_plain_regular_file_is_appended_to(tmp_path: Path, fd_guard: None) -> None:
    out = tmp_path / "out.txt"
    out.write_text("kept\n")
    pio = ProcessIO.open(StdioConfig("", str(out), ""), container_id="c", namespace="ns")
    assert exit_code(spawn(pio, "echo new; echo lost >&2")) == 0
    pio.close()
    assert out.read_text() == "kept\nnew\n"


def test_a_missing_path_fails_naming_it_and_closes_what_was_opened(
    client: Client,
) -> None:
    missing = str(client.dir / "nope" / "stderr")
    cfg = StdioConfig(client.stdin, client.stdout, missing)
    with pytest.raises(NotFound, match="nope/stderr"):
        ProcessIO.open(cfg, container_id="c", namespace="ns")
    # fd_guard checks that the stdin FIFO, the stdout ends and the copier pipe were released


def test_stdin_must_be_a_fifo(tmp_path: Path, fd_guard: None) -> None:
    regular = tmp_path / "in.txt"
    regular.write_text("x")
    with pytest.raises(InvalidArgument, match="not a FIFO"):
        ProcessIO.open(StdioConfig(str(regular), "", ""), container_id="c", namespace="ns")


# -- hostile paths: nothing a client names can make Create wait -----------------------


@pytest.mark.parametrize("reader", [False, True], ids=["no-reader", "with-reader"])
def test_a_file_log_uri_that_is_a_fifo_is_refused_at_once(
    tmp_path: Path, fd_guard: None, reader: bool
) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else -1
    uri = f"file://{fifo}"
    try:
        with pytest.raises(
            InvalidArgument, match=r"log file '.*log\.fifo' is a FIFO, not a regular"
        ):
            run_bounded(
                lambda: ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="n")
            )
    finally:
        if held >= 0:
            os.close(held)


def test_a_fifo_that_appears_after_the_look_is_refused_not_waited_on(
    tmp_path: Path, fd_guard: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is looked at, then opened with O_NONBLOCK: a FIFO put there in between
    (here: the look is made to miss it) fails the open with ENXIO instead of waiting."""
    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(fds, "stat_path", lambda path, action: None)
    with pytest.raises(InvalidArgument, match="is a FIFO, not a regular file"):
        run_bounded(lambda: fds.open_regular(str(fifo), os.O_WRONLY, "log file", create=True))


@pytest.mark.parametrize("uri_form", ["file://{}", "{}"])
def test_a_device_is_refused_without_being_opened(
    tmp_path: Path, fd_guard: None, uri_form: str
) -> None:
    uri = uri_form.format(os.devnull)
    with pytest.raises(InvalidArgument, match="is a character device"):
        ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="n")


def test_a_directory_for_stdout_is_refused(tmp_path: Path, fd_guard: None) -> None:
    with pytest.raises(InvalidArgument, match="is a directory, neither a FIFO nor a regular"):
        ProcessIO.open(StdioConfig("", str(tmp_path), ""), container_id="c", namespace="n")


def test_fifo_ends_never_wait_and_the_guests_end_blocks(client: Client) -> None:
    """Opening stdout's FIFO with no writer and stdin's with no client at all returns at
    once; the descriptor the guest writes to is blocking, as a FIFO from runc's shim is."""
    os.close(client.out_r)  # the client has not opened stdout yet: only we will read it
    client.out_r = -1
    pio = run_bounded(lambda: ProcessIO.open(client.config(), container_id="c", namespace="n"))
    assert isinstance(pio, ProcessIO)
    _, stdout_fd, _ = pio.child_fds()
    assert os.get_blocking(stdout_fd)
    assert fcntl.fcntl(stdout_fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
    assert os.fstat(stdout_fd).st_ino == os.stat(client.stdout).st_ino
    pio.close()


def test_read_regular_reads_files_and_refuses_fifos_devices_and_runaways(tmp_path: Path) -> None:
    good = tmp_path / "options.toml"
    good.write_bytes(b"BinaryName = 'crun'\n")
    assert fds.read_regular(str(good), "options", 100) == b"BinaryName = 'crun'\n"
    with pytest.raises(InvalidArgument, match="larger than 10 bytes"):
        fds.read_regular(str(good), "options", 10)
    fifo = tmp_path / "options.fifo"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a FIFO"), (Path(os.devnull), "a character device")):
        with pytest.raises(InvalidArgument, match=f"is {what}, not a regular file"):
            run_bounded(lambda path=path: fds.read_regular(str(path), "options", 100))
    with pytest.raises(NotFound):
        fds.read_regular(str(tmp_path / "absent"), "options", 100)


def test_a_spec_or_runtime_options_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    from google.protobuf import any_pb2

    from shim.api.runtimeoptions.v1 import api_pb2
    from shim.oci.spec import load
    from shim.task.service import native_options

    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(InvalidArgument, match=r"config\.json' is a FIFO"):
        run_bounded(lambda: load(str(tmp_path)))
    options = any_pb2.Any()
    options.Pack(api_pb2.Options(config_path=str(tmp_path / "config.json")))
    with pytest.raises(InvalidArgument, match=r"runtime options file .* is a FIFO"):
        run_bounded(lambda: native_options(options))


# -- binary:// --------------------------------------------------------------------------


@pytest.fixture
def logger(tmp_path: Path, fd_guard: None) -> Path:
    return binary_logger.write(tmp_path)


def logger_pid(result: Path) -> int:
    return int(Path(f"{result}.pid").read_text())


def children() -> set[int]:
    """This process's children, zombies included."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_binary_logger_gets_both_streams_args_and_env(logger: Path, tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    uri = f"binary://{logger}?result={result}&level=debug"
    pio = ProcessIO.open(StdioConfig("", uri, uri), container_id="c1", namespace="k8s.io")
    assert exit_code(spawn(pio, "echo out; echo err >&2")) == 0
    pio.close(timeout=HANG_GUARD)  # waits for the logger to finish on its own
    got = json.loads(result.read_text())
    assert got["argv"] == ["result", str(result), "level", "debug"]
    assert got["env"]["CONTAINER_ID"] == "c1"
    assert got["env"]["CONTAINER_NAMESPACE"] == "k8s.io"
    assert "PATH" not in got["env"]  # nothing of the shim's environment
    assert (got["stdout"], got["stderr"]) == ("out\n", "err\n")
    assert got["fds"] == ["/dev/null"] * 3
    assert is_gone(logger_pid(result))


def test_a_close_while_another_runs_returns_when_the_logger_is_done(
    logger: Path, tmp_path: Path
) -> None:
    """The exit closes stdio on a thread; Delete's close must not return before the logger
    has written its last byte (it sleeps 0.3 s after EOF before writing its result)."""
    result = tmp_path / "result.json"
    uri = f"binary://{logger}?result={result}"
    pio = ProcessIO.open(StdioConfig("", uri, uri), container_id="c1", namespace="ns")
    assert exit_code(spawn(pio, "echo last words")) == 0
    first = threading.Thread(target=pio.close, kwargs={"timeout": HANG_GUARD})
    first.start()
    time.sleep(0.05)  # the first close is under way (it waits for the logger)
    pio.close(timeout=HANG_GUARD)
    assert json.loads(result.read_text())["stdout"] == "last words\n"
    first.join(HANG_GUARD)


def test_binary_logger_that_never_gets_ready_times_out(logger: Path, tmp_path: Path) -> None:
    result = tmp_path / "r"
    uri = f"binary://{logger}?result={result}&mode=never-ready"
    before = children()
    with pytest.raises(DeadlineExceeded, match=str(logger)):
        ProcessIO.open(StdioConfig("", uri, ""), container_id="c", namespace="n", ready_timeout=1)
    assert children() == before  # killed and reaped, whether or not it got far


def test_binary_v2_requires_the_ready_byte(logger: Path, tmp_path: Path) -> None:
    result = tmp_path / "r"
    uri = f"binary-v2://{logger}?result={result}&mode=no-byte"
    with pytest.raises(FailedPrecondition, match="without signalling ready"):
        ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="n")
    assert is_gone(logger_pid(result))


def test_binary_closing_fd5_counts_as_ready(logger: Path, tmp_path: Path) -> None:
    result = tmp_path / "r"
    uri = f"binary://{logger}?result={result}&mode=no-byte"
    pio = ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="n")
    assert exit_code(spawn(pio, "echo out")) == 0
    pio.close(timeout=HANG_GUARD)
    assert json.loads(result.read_text())["stdout"] == "out\n"


def test_a_logger_that_outlives_eof_is_killed(logger: Path, tmp_path: Path) -> None:
    result = tmp_path / "r"
    uri = f"binary://{logger}?result={result}&mode=stubborn"
    pio = ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="n")
    assert exit_code(spawn(pio, "echo out")) == 0
    pio.close(timeout=0.2)  # SIGTERM is ignored, so this goes all the way to SIGKILL
    assert is_gone(logger_pid(result))


def test_a_missing_logger_binary_is_not_found(tmp_path: Path, fd_guard: None) -> None:
    uri = f"binary://{tmp_path}/no-logger"
    with pytest.raises(NotFound, match="no-logger"):
        ProcessIO.open(StdioConfig("", uri, uri), container_id="c", namespace="n")


# -- null, refusals, the handover contract ------------------------------------------------


def test_null_io(fd_guard: None) -> None:
    pio = ProcessIO.null()
    fds = pio.child_fds()
    assert [os.readlink(f"/proc/self/fd/{fd}") for fd in fds] == ["/dev/null"] * 3
    assert exit_code(spawn(pio, "cat; echo out; echo err >&2")) == 0
    pio.close()


# -- terminals ------------------------------------------------------------------------


def _tty_config(client: Client, *, stdin: bool = True) -> StdioConfig:
    """What containerd sends with terminal=true: stdin and stdout, no stderr."""
    return StdioConfig(client.stdin if stdin else "", client.stdout, "", terminal=True)


def spawn_on_tty(fds_: tuple[int, int, int], script: str) -> subprocess.Popen[bytes]:
    """A child on the slave, in a session of its own whose controlling terminal it is (as
    shim/proc/child.py does)."""

    def ctty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return subprocess.Popen(
        ["/bin/sh", "-c", script],
        stdin=fds_[0],
        stdout=fds_[1],
        stderr=fds_[2],
        start_new_session=True,
        preexec_fn=ctty,
    )


def test_a_terminal_carries_both_streams_and_echoes_input(client: Client) -> None:
    pio = ProcessIO.open(_tty_config(client), container_id="c", namespace="ns")
    fds_ = pio.child_fds()
    assert fds_[0] == fds_[1] == fds_[2] and os.isatty(fds_[0])
    child = spawn_on_tty(
        fds_,
        "test -t 0 && test -t 1 && test -t 2 && echo tty; read line; echo got $line; echo e >&2",
    )
    pio.started()
    first = read_until(client.out_r, b"tty\r\n")  # typed before: its echo would come first
    os.write(client.open_stdin(), b"hello\n")
    out = first + read_to_eof(client.out_r)  # EOF: the child exited, the copier reached EIO
    assert exit_code(child) == 0
    assert out.split(b"\r\n") == [b"tty", b"hello", b"got hello", b"e", b""]
    assert os.read(client.err_r, 10) == b""  # no writer was ever opened on it
    pio.close()


def test_close_stdin_on_a_terminal_types_eof(client: Client) -> None:
    pio = ProcessIO.open(_tty_config(client), container_id="c", namespace="ns")
    child = spawn_on_tty(pio.child_fds(), "cat; echo done")
    pio.started()
    os.write(client.open_stdin(), b"abc\n")
    pio.close_stdin()  # the client keeps its write end open: EOF is ours to give
    assert read_to_eof(client.out_r).split(b"\r\n")[-2:] == [b"done", b""]
    assert exit_code(child) == 0
    pio.close()


def test_close_stdin_after_a_partial_line_still_ends_the_input(client: Client) -> None:
    """`printf abc | ... -t cat`: the first ^D only hands "abc" over; the shim types a
    second one, at the start of a line, which is the reader's EOF."""
    pio = ProcessIO.open(_tty_config(client), container_id="c", namespace="ns")
    child = spawn_on_tty(pio.child_fds(), "cat; echo done")
    pio.started()
    os.write(client.open_stdin(), b"abc")
    pio.close_stdin()
    # The terminal's echo of "abc", cat's copy of it, then the line after cat's EOF.
    assert read_to_eof(client.out_r) == b"abcabcdone\r\n"
    assert exit_code(child) == 0
    pio.close()


def test_close_stdin_before_runcs_master_arrives_is_kept(client: Client) -> None:
    """CloseIO between Create and the master's arrival (runc's terminal comes at Start):
    the copier that starts with the master delivers the input, then EOF."""
    pio = ProcessIO.open(_tty_config(client), container_id="c", namespace="ns", pty=False)
    pio.child_fds()
    pio.close_stdin()  # nothing reads the FIFO yet: the client has written nothing
    master, slave = os.openpty()
    pio.attach_console(master)
    child = spawn_on_tty((slave, slave, slave), "cat; echo done")
    os.close(slave)
    pio.started()
    assert read_to_eof(client.out_r) == b"done\r\n"
    assert exit_code(child) == 0
    pio.close()


def test_a_size_beyond_16_bits_is_refused(client: Client) -> None:
    pio = ProcessIO.open(_tty_config(client, stdin=False), container_id="c", namespace="ns")
    with pytest.raises(InvalidArgument, match="at most 65535"):
        pio.resize(70000, 24)
    pio.close()


def test_resize_sets_the_window_size(client: Client) -> None:
    pio = ProcessIO.open(_tty_config(client, stdin=False), container_id="c", namespace="ns")
    pio.resize(123, 45)
    child = spawn_on_tty(pio.child_fds(), "stty size")
    pio.started()
    assert read_to_eof(client.out_r) == b"45 123\r\n"
    assert exit_code(child) == 0
    pio.close()


def test_the_last_output_before_the_exit_is_not_lost(client: Client) -> None:
    """Far more than the pty's buffer, written right before the exit: every byte arrives
    before the client's EOF."""
    pio = ProcessIO.open(_tty_config(client, stdin=False), container_id="c", namespace="ns")
    child = spawn_on_tty(pio.child_fds(), "stty -onlcr; head -c 300000 /dev/zero | tr '\\0' x")
    pio.started()
    out = read_to_eof(client.out_r)
    assert exit_code(child) == 0
    assert out == b"x" * 300000
    pio.close()


def test_a_runtime_made_terminal_is_attached_later(client: Client) -> None:
    """runc's case: the process gets /dev/null from us, the master arrives afterwards."""
    pio = ProcessIO.open(_tty_config(client), container_id="c", namespace="ns", pty=False)
    fds_ = pio.child_fds()
    assert [os.readlink(f"/proc/self/fd/{fd}") for fd in fds_] == ["/dev/null"] * 3
    pio.resize(80, 24)  # no terminal yet: ignored, as the runc shim does
    master, slave = os.openpty()
    pio.attach_console(master)
    child = spawn_on_tty((slave, slave, slave), "read line; echo got $line")
    os.close(slave)
    pio.started()
    os.write(client.open_stdin(), b"x\n")
    assert read_to_eof(client.out_r).split(b"\r\n") == [b"x", b"got x", b""]
    assert exit_code(child) == 0
    spare, spare_slave = os.openpty()
    os.close(spare_slave)
    with pytest.raises(FailedPrecondition, match="no terminal waiting"):
        pio.attach_console(spare)  # closed by the refusal
    pio.close()


def test_an_unknown_scheme_is_refused_by_name(fd_guard: None) -> None:
    with pytest.raises(InvalidArgument, match="'npipe'"):
        ProcessIO.open(StdioConfig("", r"npipe:///x", ""), container_id="c", namespace="n")


def test_handover_contract(client: Client) -> None:
    pio = ProcessIO.open(client.config(), container_id="c", namespace="ns")
    for fd in pio.child_fds():  # close-on-exec: the forker's dup2() makes the inheritable copy
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    child = spawn(pio, "cat")
    with pytest.raises(FailedPrecondition):
        pio.child_fds()
    pio.started()  # idempotent
    pio.close_stdin()
    assert exit_code(child) == 0
    pio.close()
    pio.close()  # idempotent
    pio.close_stdin()  # harmless after close


def test_close_before_start_releases_everything(client: Client) -> None:
    pio = ProcessIO.open(client.config(), container_id="c", namespace="ns")
    pio.close()
    assert read_to_eof(client.out_r) == b""  # our writers are gone


# -- the URI table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("", Target(Scheme.NULL)),
        ("/run/fifo/a?b#c%20", Target(Scheme.PATH, "/run/fifo/a?b#c%20")),
        ("fifo:///run/x", Target(Scheme.PATH, "/run/x")),
        ("file:///var/log/a%20b.log", Target(Scheme.FILE, "/var/log/a b.log")),
        ("file://localhost/l", Target(Scheme.FILE, "/l")),
        ("binary:///bin/log", Target(Scheme.BINARY, "/bin/log")),
        (
            "binary:///bin/log?b=2&a=1&b=3&flag",
            Target(Scheme.BINARY, "/bin/log", ("b", "2", "a", "1", "flag", "")),
        ),
        ("binary-v2:///bin/log?x=y", Target(Scheme.BINARY, "/bin/log", ("x", "y"), True)),
    ],
)
def test_parse(uri: str, target: Target) -> None:
    assert parse(uri, "stdout") == target


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("relative/path", "absolute"),
        ("npipe:///x", "unknown stdio URI scheme 'npipe'"),
        ("file://host/x", "host"),
        ("file:relative", "absolute path"),
        ("binary://", "absolute path"),
    ],
)
def test_parse_refuses(uri: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(uri, "stdout")


def test_plan_shares_a_log_uri_between_the_output_streams() -> None:
    log = "binary:///bin/log?a=b"
    for out, err in ((log, log), (log, ""), ("", log)):
        p = plan("", out, err)
        assert p.shared
        assert p.stdout == p.stderr == parse(log, "stdout")
    p = plan("/in", "/out", "")
    assert (p.shared, p.stdin.scheme, p.stdout.scheme, p.stderr.scheme) == (
        False,
        Scheme.PATH,
        Scheme.PATH,
        Scheme.NULL,
    )


@pytest.mark.parametrize(
    ("stdin", "stdout", "stderr"),
    [
        ("file:///x", "", ""),
        ("", "file:///x", "/fifo"),
        ("", "file:///x", "file:///y"),
        ("", "/fifo", "binary:///bin/log"),
    ],
)
def test_plan_refuses_what_it_cannot_serve(stdin: str, stdout: str, stderr: str) -> None:
    with pytest.raises(InvalidArgument):
        plan(stdin, stdout, stderr)


def test_sigpipe_default_is_restored_for_children() -> None:
    """Guard for the EPIPE test above: it proves something only if a child would die of it."""
    r, w = os.pipe()
    os.close(r)
    child = subprocess.Popen(["/bin/sh", "-c", "echo x"], stdout=w)
    os.close(w)
    assert exit_code(child) in (-signal.SIGPIPE, 1)
