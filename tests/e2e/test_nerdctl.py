"""nerdctl, the docker-like client containerd users type, against our images and shim.

nerdctl (built by ``tests/nerdctl.py``) talks to the private containerd with its own state
in a private data root, and runs with ``--net none --pull never``: no CNI, no registry, no
traffic at all. What it checks that ``ctr`` cannot:

- ``nerdctl load`` of a ``wasmtime-shim build`` archive (rootfs format). Like ``ctr import``
  it filters out the ``wasip1/wasm`` manifest unless told ``--all-platforms``: pinned here.
- ``nerdctl run --runtime io.containerd.wasmtime.v1``: the guest's output on nerdctl's
  stdout and its exit code as nerdctl's, through a spec nerdctl wrote (OCI hooks, bind
  mounts of hosts/resolv.conf files, its labels).
- ``nerdctl run -d`` + ``nerdctl logs``: a detached run hands the shim a ``binary://`` log
  URI naming nerdctl itself; the shim must start that logger with the guest's output on fds
  3/4, wait for its ready signal on fd 5 and let it finish; ``nerdctl logs`` reads what it
  wrote. (A foreground run does not exercise this: nerdctl starts its logger itself.)
- ``nerdctl run -i``: stdin, ended by nerdctl's CloseIO.

Leaks: the ``ns`` fixture fails a test that leaves a shim, mount, socket or bundle; the
``nerdctl`` fixture fails one after which nerdctl's default state dirs exist (they did not
before) or a logger process it started is still alive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import RUNTIME, PrivateContainerd
from tests.e2e.helpers import remove_container, shim_pids, wait_for_status
from tests.nerdctl import NERDCTL, Nerdctl
from tests.prereq import require

REF = "localhost/nerdctl-wasm/hello:1"
IMAGE_CMD = "7"  # the image's Cmd: hello exits with its first argument
# Paths nerdctl uses when not told otherwise; none may appear because of these tests.
DEFAULT_STATE = (Path("/var/lib/nerdctl"), Path("/etc/nerdctl"), Path("/run/nerdctl"))
RUN_FLAGS = ("--net", "none", "--pull", "never", "--runtime", RUNTIME)
WAIT = 60.0


def hello_output(*argv: str) -> str:
    """What tests/wasm/c/hello.c prints for ``argv`` (argv[0] included)."""
    return "hello from wasm\n" + "".join(f"argv[{i}]={a}\n" for i, a in enumerate(argv))


@pytest.fixture(scope="session")
def nerdctl_binary() -> Path:
    problem = NERDCTL.problem()
    require(problem is None, problem or "")
    return NERDCTL.build()  # a failed build fails the test: go is there, so it must work


@pytest.fixture(scope="module")
def app_tar(build_wasm: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``wasmtime-shim build`` (the installed console script): hello at /app.wasm with Cmd
    ``7``, cat and sleep at /bin/{cat,sleep}.wasm."""
    out = tmp_path_factory.mktemp("nerdctl-image") / "app.tar"
    cmd = [
        str(Path(sys.prefix) / "bin" / "wasmtime-shim"),
        "build",
        str(build_wasm("hello")),
        "-o",
        str(out),
        "--name",
        REF,
        "--arg",
        IMAGE_CMD,
        "--format",
        "rootfs",  # --file needs a filesystem (runwasi's layout: test_wasm_layer_images.py)
        "--file",
        f"{build_wasm('cat')}:/bin/cat.wasm",
        "--file",
        f"{build_wasm('sleep')}:/bin/sleep.wasm",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return out


@pytest.fixture
def nerdctl(containerd: PrivateContainerd, ns: str, nerdctl_binary: Path) -> Iterator[Nerdctl]:
    """nerdctl on the test's namespace, data root ``<containerd base>/nerdctl/<ns>``."""
    absent = [p for p in DEFAULT_STATE if not p.exists()]
    client = Nerdctl(nerdctl_binary, containerd.address, ns, containerd.base / "nerdctl" / ns)
    yield client
    for cid in client.run("ps", "-a", "-q", "--no-trunc").stdout.split():
        client.run("rm", "-f", cid)
    loggers = wait_for_no_loggers(client)
    appeared = [p for p in absent if p.exists()]
    assert not appeared, f"nerdctl wrote outside its data root: {appeared}"
    assert not loggers, f"logging processes still alive after rm: {loggers}"


@pytest.fixture
def loaded(nerdctl: Nerdctl, app_tar: Path) -> str:
    load = nerdctl.run("load", "--all-platforms", "-i", str(app_tar))
    assert load.returncode == 0, show(load)
    return REF


def show(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(map(str, result.args))}\nexit {result.returncode}\n" + (
        f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    )


def logger_processes(client: Nerdctl) -> list[str]:
    """Processes running ``client.binary`` as a logger for our data root (pid + argv)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if exe == str(client.binary) and str(client.data_root) in text:
            found.append(f"{proc.name} {text}")
    return found


def wait_for_no_loggers(client: Nerdctl, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (found := logger_processes(client)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_load_needs_a_platform_flag_and_then_lists_the_image(
    nerdctl: Nerdctl, app_tar: Path
) -> None:
    plain = nerdctl.run("load", "-i", str(app_tar))
    assert plain.returncode != 0 and "filtered out" in plain.stderr, show(plain)

    load = nerdctl.run("load", "--all-platforms", "-i", str(app_tar))
    assert load.returncode == 0 and f"Loaded image: {REF}" in load.stdout, show(load)

    listing = nerdctl.run("images", "--format", "{{json .}}")
    assert listing.returncode == 0, show(listing)
    rows = [json.loads(line) for line in listing.stdout.splitlines() if line.strip()]
    assert [(r["Repository"], r["Tag"], r["Platform"]) for r in rows] == [
        ("localhost/nerdctl-wasm/hello", "1", "wasip1/wasm")
    ], listing.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [((), int(IMAGE_CMD)), (("0",), 0), (("42", "two words"), 42)],
    ids=["image-cmd", "zero", "args"],
)
def test_run_prints_the_output_and_returns_the_exit_code(
    nerdctl: Nerdctl, loaded: str, args: tuple[str, ...], code: int
) -> None:
    run = nerdctl.run("run", "--rm", *RUN_FLAGS, loaded, *args, timeout=WAIT)
    expected = hello_output("/app.wasm", *(args or (IMAGE_CMD,)))
    assert (run.returncode, run.stdout) == (code, expected), show(run)
    left = nerdctl.run("ps", "-a", "-q")
    assert left.stdout.split() == [], f"--rm left containers: {left.stdout}"


def test_detached_run_logs_through_the_binary_log_uri(
    nerdctl: Nerdctl, containerd: PrivateContainerd, loaded: str
) -> None:
    start = nerdctl.run("run", "-d", "--name", "det", *RUN_FLAGS, loaded, "3", timeout=WAIT)
    assert start.returncode == 0, show(start)
    cid = start.stdout.strip()

    waited = nerdctl.run("wait", "det", timeout=WAIT)
    assert (waited.returncode, waited.stdout.strip()) == (0, "3"), show(waited)

    inspect = nerdctl.run("inspect", "det")
    assert inspect.returncode == 0, show(inspect)
    (info,) = json.loads(inspect.stdout)
    labels = info["Config"]["Labels"]
    assert info["Id"] == cid and info["State"]["ExitCode"] == 3, info["State"]
    assert labels["nerdctl/log-uri"].startswith(f"binary://{nerdctl.binary}?"), labels
    log_path = Path(info["LogPath"])
    assert log_path.is_relative_to(nerdctl.data_root), log_path
    assert Path(labels["nerdctl/state-dir"]).is_relative_to(nerdctl.data_root), labels

    logs = nerdctl.run("logs", "det")
    assert (logs.returncode, logs.stdout) == (0, hello_output("/app.wasm", "3")), show(logs)
    # The json-file driver's own file: one JSON record per line the guest printed.
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["stream"], r["log"]) for r in records] == [
        ("stdout", line + "\n") for line in hello_output("/app.wasm", "3").splitlines()
    ]

    removed = nerdctl.run("rm", "det")
    assert removed.returncode == 0, show(removed)
    assert wait_for_no_loggers(nerdctl) == []
    assert containerd.ctr("containers", "ls", "-q", namespace=nerdctl.namespace).stdout == ""


def test_the_shim_runs_the_logger_of_a_running_container_until_it_is_killed(
    nerdctl: Nerdctl, containerd: PrivateContainerd, loaded: str
) -> None:
    """While a detached guest runs, its logger is a child of the shim (not of nerdctl, which
    has exited) and already shows the output; ``nerdctl kill`` gives 137, and after ``rm``
    neither the logger nor anything of the shim is left."""
    flags = ("-d", "--name", "sleeper", "--entrypoint", "/bin/sleep.wasm")
    start = nerdctl.run("run", *flags, *RUN_FLAGS, loaded, timeout=WAIT)
    assert start.returncode == 0, show(start)
    cid = start.stdout.strip()
    try:
        deadline = time.monotonic() + WAIT
        while "sleeping 3600" not in (logs := nerdctl.run("logs", "sleeper")).stdout:
            assert time.monotonic() < deadline, show(logs)
            time.sleep(0.1)
        loggers = logger_processes(nerdctl)
        assert len(loggers) == 1, loggers
        parent = parent_pid(int(loggers[0].split()[0]))
        assert parent in shim_pids(containerd, cid), (loggers, shim_pids(containerd, cid))

        killed = nerdctl.run("kill", "sleeper")
        assert killed.returncode == 0, show(killed)
        waited = nerdctl.run("wait", "sleeper", timeout=WAIT)
        assert (waited.returncode, waited.stdout.strip()) == (0, "137"), show(waited)
        assert nerdctl.run("logs", "sleeper").stdout == "sleeping 3600\n"
    finally:
        removed = nerdctl.run("rm", "-f", "sleeper")
    assert removed.returncode == 0, show(removed)
    assert wait_for_no_loggers(nerdctl) == []


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_stdin_reaches_the_guest_and_ends_with_close_io(
    nerdctl: Nerdctl, containerd: PrivateContainerd, loaded: str
) -> None:
    """``nerdctl run -i`` of cat: what we type comes back, and closing our stdin ends it.

    Stdin is closed only once the task runs, as a person typing would. nerdctl turns the
    end of its stdin into a CloseIO call, but only if the task already exists when its stdin
    ends: input that is complete before Create returns (``echo x | nerdctl run -i``) races
    with Create, loses ("failed to get task for StdinCloser") and never sends CloseIO; the
    guest then waits for input forever, with runc as with us, since both shims hold a
    writer on the stdin FIFO so that only CloseIO means EOF.
    """
    cidfile = nerdctl.data_root / "cat.cid"
    flags = ("--rm", "-i", "--cidfile", str(cidfile), "--entrypoint", "/bin/cat.wasm")
    proc = subprocess.Popen(
        nerdctl.argv("run", *flags, *RUN_FLAGS, loaded),
        env=nerdctl.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cid = ""
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"first line\nsecond line\n")
        proc.stdin.flush()
        deadline = time.monotonic() + WAIT
        while not (cid := read_cid(cidfile)) and proc.poll() is None:
            assert time.monotonic() < deadline, "nerdctl wrote no cidfile"
            time.sleep(0.05)
        wait_for_status(containerd, nerdctl.namespace, cid, "RUNNING", timeout=WAIT)
        proc.stdin.close()
        proc.stdin = None
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            if cid:
                remove_container(containerd, nerdctl.namespace, cid)
    assert (proc.returncode, out) == (0, b"first line\nsecond line\n"), err.decode()


def read_cid(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def test_pause_unpause_and_update_of_a_running_guest(
    nerdctl: Nerdctl, containerd: PrivateContainerd, loaded: str
) -> None:
    """``nerdctl pause``/``unpause`` (Pause/Resume) and ``nerdctl update`` (Update, with the
    whole linux.resources of the spec, devices included, as nerdctl sends it): a higher
    memory limit reaches the cgroup, a lower one is refused with the reason and changes
    nothing, and the guest runs on."""
    flags = ("-d", "--name", "upd", "--memory", "64m", "--entrypoint", "/bin/sleep.wasm")
    start = nerdctl.run("run", *flags, *RUN_FLAGS, loaded, timeout=WAIT)
    assert start.returncode == 0, show(start)
    cid = start.stdout.strip()
    limit = memory_limit_file(nerdctl.namespace, cid)
    try:
        assert int(limit.read_text()) == 64 << 20
        paused = nerdctl.run("pause", "upd")
        assert paused.returncode == 0, show(paused)
        assert '"Paused":true' in nerdctl.run("inspect", "upd").stdout.replace(" ", "")
        unpaused = nerdctl.run("unpause", "upd")
        assert unpaused.returncode == 0, show(unpaused)
        status = containerd.ctr("task", "ls", namespace=nerdctl.namespace).stdout
        assert f"{cid}" in status and "RUNNING" in status, status

        raised = nerdctl.run("update", "--memory", "128m", "upd")
        assert raised.returncode == 0, show(raised)
        assert int(limit.read_text()) == 128 << 20
        lowered = nerdctl.run("update", "--memory", "32m", "upd")
        assert lowered.returncode != 0
        assert "cannot lower the memory limit of a running wasm container" in lowered.stderr
        assert int(limit.read_text()) == 128 << 20
        assert "RUNNING" in containerd.ctr("task", "ls", namespace=nerdctl.namespace).stdout
    finally:
        removed = nerdctl.run("rm", "-f", "upd")
    assert removed.returncode == 0, show(removed)
    assert not limit.exists()


def memory_limit_file(namespace: str, cid: str) -> Path:
    """The memory limit of a container nerdctl made (its cgroupsPath is ``/<ns>/<id>``)."""
    v1 = Path("/sys/fs/cgroup/memory", namespace, cid, "memory.limit_in_bytes")
    return v1 if v1.parent.exists() else Path("/sys/fs/cgroup", namespace, cid, "memory.max")


def test_stats_and_top_of_a_running_guest(nerdctl: Nerdctl, loaded: str) -> None:
    """``nerdctl stats --no-stream`` reads the shim's Metrics (it needs every section it
    dereferences) and ``nerdctl top`` lists the guest's process."""
    flags = ("-d", "--name", "st", "--memory", "64m", "--entrypoint", "/bin/sleep.wasm")
    start = nerdctl.run("run", *flags, *RUN_FLAGS, loaded, timeout=WAIT)
    assert start.returncode == 0, show(start)
    try:
        stats = nerdctl.run("stats", "--no-stream", "st")
        assert stats.returncode == 0, show(stats)
        assert "panic" not in stats.stderr, show(stats)
        row = [line for line in stats.stdout.splitlines() if "st" in line.split()]
        assert row and "MiB / 64MiB" in row[0], show(stats)
        top = nerdctl.run("top", "st")
        assert top.returncode == 0, show(top)
        assert "sleep.wasm" in top.stdout, show(top)
    finally:
        removed = nerdctl.run("rm", "-f", "st")
    assert removed.returncode == 0, show(removed)


def test_exec_into_a_running_guest(nerdctl: Nerdctl, loaded: str) -> None:
    """``nerdctl exec``: a program of the image runs beside the init, its output and exit
    code come back; ``-i`` pipes nerdctl's stdin into it and its end is the program's EOF
    (CloseIO); the init runs on."""
    flags = ("-d", "--name", "ex", "--entrypoint", "/bin/sleep.wasm")
    start = nerdctl.run("run", *flags, *RUN_FLAGS, loaded, timeout=WAIT)
    assert start.returncode == 0, show(start)
    try:
        done = nerdctl.run("exec", "ex", "/app.wasm", "4", "from-exec", timeout=WAIT)
        assert done.stdout == "hello from wasm\nargv[0]=/app.wasm\nargv[1]=4\nargv[2]=from-exec\n"
        assert done.returncode != 0 and "exec failed with exit code 4" in done.stderr, show(done)
        # nerdctl 1.7.7 sets the CloseIO hook of `exec -i` only after Exec returns, while it
        # already copies its stdin: input that ends before then never sends CloseIO, and the
        # process (with runc's shim too, which holds the stdin FIFO's write end as we do)
        # never sees EOF. So the second line goes in once the first came back (Start
        # follows the hook), and its end is nerdctl's CloseIO.
        cat = subprocess.Popen(
            nerdctl.argv("exec", "-i", "ex", "/bin/cat.wasm"),
            env=nerdctl.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert cat.stdin is not None and cat.stdout is not None
            cat.stdin.write("piped\n")
            cat.stdin.flush()
            assert cat.stdout.readline() == "piped\n"
            out, err = cat.communicate("lines\n", timeout=WAIT)
            assert (cat.returncode, out) == (0, "lines\n"), err
        finally:
            if cat.poll() is None:
                cat.kill()
                cat.wait()
        assert "Up" in nerdctl.run("ps", "--filter", "name=ex").stdout
    finally:
        removed = nerdctl.run("rm", "-f", "ex")
    assert removed.returncode == 0, show(removed)
