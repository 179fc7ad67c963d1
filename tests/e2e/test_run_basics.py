"""``ctr run`` through the shim: output, exit codes, args, env, entrypoints, task inspection.

Everything goes through the real containerd and ``ctr`` (see tests/containerd.py); the image
is built once for the module and imported into each test's namespace. Facts about ctr 1.6 the
tests rely on: arguments after the container id replace the image's Entrypoint and Cmd;
``--env`` replaces a variable of the same name or appends; ``--cwd`` sets ``process.cwd``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.containerd import ContainerdError, PrivateContainerd
from tests.e2e.helpers import (
    TestImage,
    c_program,
    container_spec,
    ctr_run,
    describe,
    make_image,
    new_id,
    process_environ,
    remove_container,
    shim_pids,
    task_pid,
    task_status,
    tool_files,
    wait_for_status,
    wat_binary,
    wat_text,
)
from wasmtime_shim.images.build import ImageConfig

IMAGE_ENV = ("PATH=/opt/tools:/bin", "IMAGE_VAR=from the image", "SPACED=a  b c")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, build_wasm: Callable[[str], Path]) -> TestImage:
    """One image for the module: the C tools, WAT files, components and entrypoint puzzles.

    ``which.wasm`` exists twice: /opt/tools (hello, first on the image's PATH) and /bin (env),
    so the program that answers shows which PATH entry won. ``build_wasm`` is requested so a
    missing wasm toolchain skips (in CI: fails) the module cleanly.
    """
    files = tool_files("/bin")
    files |= {
        "/app/sub/rel.wasm": c_program("hello"),
        "/opt/tools/only-in-path.wasm": c_program("hello"),
        "/opt/tools/which.wasm": c_program("hello"),
        "/bin/which.wasm": c_program("env"),
        "/wat/echo.wat": wat_text("echo"),
        "/wat/funcs.wat": wat_text("funcs"),
        "/component/hello.wasm": wat_binary("hello_component"),
        "/component/exit.wasm": wat_binary("exit_component"),
    }
    config = ImageConfig(
        entrypoint=("/bin/hello.wasm",), cmd=("5",), env=IMAGE_ENV, working_dir="/app"
    )
    return make_image(
        tmp_path_factory.mktemp("basics"),
        files,
        ref="example.com/e2e/basics:latest",
        config=config,
    )


@pytest.fixture
def ref(containerd: PrivateContainerd, ns: str, image: TestImage) -> str:
    return image.import_into(containerd, ns)


def hello_lines(*argv: str) -> str:
    return "hello from wasm\n" + "".join(f"argv[{i}]={a}\n" for i, a in enumerate(argv))


# ------------------------------------------------------------------ output and exit codes


def test_hello_world_prints_and_exits_zero(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm")
    assert (run.returncode, run.stdout) == (0, hello_lines("/bin/hello.wasm")), describe(
        containerd, run
    )


def test_ctr_run_returns_the_guests_exit_code(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "/bin/hello.wasm", "42")
    assert run.returncode == 42, describe(containerd, run)
    assert run.stdout == hello_lines("/bin/hello.wasm", "42")


def test_image_entrypoint_and_cmd_are_the_default(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref)
    assert (run.returncode, run.stdout) == (5, hello_lines("/bin/hello.wasm", "5")), describe(
        containerd, run
    )


# ------------------------------------------------------------------ args and env


def test_args_arrive_exactly(containerd: PrivateContainerd, ns: str, ref: str) -> None:
    """echo.wat writes its raw argv buffer: NUL-separated, so nothing can be ambiguous."""
    args = ["/wat/echo.wat", "two words", "", "  lead and trail  ", "tab\there", "ünï©ødé", "-x"]
    run = ctr_run(containerd, ns, ref, *args)
    assert run.returncode == 42, describe(containerd, run)
    assert run.stdout == "hello from wasm\n" + "".join(a + "\0" for a in args)


def test_env_is_exactly_the_specs(containerd: PrivateContainerd, ns: str, ref: str) -> None:
    """Image Env plus ``--env`` values, in the spec's order, and nothing else."""
    cid = new_id("env")
    flags = ("--env", "FROM_FLAG=with spaces = and equals", "--env", "EMPTY=")
    flags += ("--env", "IMAGE_VAR=overridden")
    try:
        run = ctr_run(containerd, ns, ref, "/bin/env.wasm", flags=flags, container_id=cid, rm=False)
        assert run.returncode == 0, describe(containerd, run)
        spec_env = container_spec(containerd, ns, cid)["process"]["env"]
    finally:
        remove_container(containerd, ns, cid)
    assert "FROM_FLAG=with spaces = and equals" in spec_env
    assert "IMAGE_VAR=overridden" in spec_env and "SPACED=a  b c" in spec_env
    assert run.stdout.splitlines() == spec_env


def test_the_shims_own_environment_does_not_reach_the_guest(
    containerd: PrivateContainerd, ns: str, ref: str, tmp_path: Path
) -> None:
    """Run env detached with a log file, then read the environ of the very shim that ran it.

    The task is not deleted until the shim's environment has been read, so the shim is still
    alive; ``--env LANG=mine`` also shows a spec variable wins over the shim's own.
    """
    cid = new_id("shimenv")
    log = tmp_path / "env.log"
    flags = ("-d", "--log-uri", f"file://{log}", "--env", "LANG=mine")
    try:
        run = ctr_run(containerd, ns, ref, "/bin/env.wasm", flags=flags, container_id=cid, rm=False)
        assert run.returncode == 0, describe(containerd, run)
        wait_for_status(containerd, ns, cid, "STOPPED")
        pids = shim_pids(containerd, cid)
        assert pids, "no shim process found for " + cid
        shim_env: dict[str, str] = {}
        for pid in pids:
            shim_env |= process_environ(pid)
        spec_env = container_spec(containerd, ns, cid)["process"]["env"]
    finally:
        remove_container(containerd, ns, cid)
    guest_env = log.read_text().splitlines()
    # The shim provably has these (containerd sets them for every shim it starts).
    assert shim_env.get("TTRPC_ADDRESS") == str(containerd.ttrpc_address), shim_env
    assert "GOMAXPROCS" in shim_env and "PATH" in shim_env, shim_env
    shim_only = {f"{name}={value}" for name, value in shim_env.items()} - set(spec_env)
    assert not shim_only & set(guest_env), sorted(shim_only & set(guest_env))
    assert "LANG=mine" in guest_env
    assert guest_env == spec_env
    names = {item.partition("=")[0] for item in guest_env}
    assert not names & {"TTRPC_ADDRESS", "GOMAXPROCS", "LD_LIBRARY_PATH"}, guest_env


# ------------------------------------------------------------------ entrypoint resolution


@pytest.mark.parametrize(
    ("args", "flags", "expected_code"),
    [
        pytest.param(["/app/sub/rel.wasm", "7"], (), 7, id="absolute"),
        pytest.param(["sub/rel.wasm", "8"], (), 8, id="relative-to-image-workdir"),
        pytest.param(["./sub/rel.wasm", "9"], (), 9, id="dot-relative"),
        pytest.param(["./rel.wasm", "10"], ("--cwd", "/app/sub"), 10, id="relative-to-cwd"),
        pytest.param(["../app/sub/rel.wasm", "11"], ("--cwd", "/bin"), 11, id="dotdot"),
        pytest.param(["only-in-path.wasm", "12"], (), 12, id="through-path"),
    ],
)
def test_entrypoint_resolution(
    containerd: PrivateContainerd,
    ns: str,
    ref: str,
    args: list[str],
    flags: tuple[str, ...],
    expected_code: int,
) -> None:
    """argv[0] is passed as written, whatever file it resolved to."""
    run = ctr_run(containerd, ns, ref, *args, flags=flags)
    assert run.returncode == expected_code, describe(containerd, run)
    assert run.stdout == hello_lines(*args)


def test_path_lookup_takes_the_first_match_in_order(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    first = ctr_run(containerd, ns, ref, "which.wasm", "13")
    assert (first.returncode, first.stdout) == (13, hello_lines("which.wasm", "13")), describe(
        containerd, first
    )
    # With PATH=/bin the other which.wasm (the env program) answers.
    other = ctr_run(containerd, ns, ref, "which.wasm", flags=("--env", "PATH=/bin"))
    assert other.returncode == 0, describe(containerd, other)
    assert "PATH=/bin" in other.stdout.splitlines()


def test_a_missing_entrypoint_fails_the_run_naming_it(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "no-such-program.wasm")
    assert run.returncode != 0, describe(containerd, run)
    assert "no-such-program.wasm" in run.stderr, describe(containerd, run)


# ------------------------------------------------------------------ WAT and components


def test_a_wat_entrypoint_runs(containerd: PrivateContainerd, ns: str, ref: str) -> None:
    run = ctr_run(containerd, ns, ref, "/wat/echo.wat")
    assert run.returncode == 42, describe(containerd, run)
    assert run.stdout == "hello from wasm\n/wat/echo.wat\0"
    # echo.wat writes its environ buffer to stderr: exactly the image's Env.
    assert run.stderr == "".join(item + "\0" for item in IMAGE_ENV)


@pytest.mark.parametrize(
    ("entry", "expected_code", "expected_out"),
    [
        pytest.param("/wat/funcs.wat", 3, "", id="default-start"),
        pytest.param("/wat/funcs.wat#_start", 3, "", id="explicit-start"),
        pytest.param("/wat/funcs.wat#other", 0, "other\n", id="other-func"),
    ],
)
def test_module_hash_func_selects_the_export(
    containerd: PrivateContainerd,
    ns: str,
    ref: str,
    entry: str,
    expected_code: int,
    expected_out: str,
) -> None:
    run = ctr_run(containerd, ns, ref, entry)
    assert (run.returncode, run.stdout) == (expected_code, expected_out), describe(containerd, run)


def test_a_guest_that_exits_at_once_silently_always_reports_its_exit(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    """funcs.wat's ``_start`` is a bare ``proc_exit(3)``: the exit can reach the shim together
    with the spawn reply. Several runs, because losing that exit is a race (it was lost in
    about one run in three: the task then stays RUNNING and ``ctr run`` never returns)."""
    for attempt in range(12):
        cid = new_id("quick")
        try:
            run = ctr_run(containerd, ns, ref, "/wat/funcs.wat", container_id=cid, timeout=30)
        except ContainerdError as exc:
            status = task_status(containerd, ns, cid)
            remove_container(containerd, ns, cid)
            pytest.fail(f"run {attempt}: no exit reported (task {status})\n{exc}")
        assert run.returncode == 3, describe(containerd, run)


def test_a_hash_func_that_is_not_exported_fails_the_run(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "/wat/funcs.wat#nope")
    assert run.returncode != 0, describe(containerd, run)
    assert "nope" in run.stderr, describe(containerd, run)


def test_a_wasi_p2_component_runs(containerd: PrivateContainerd, ns: str, ref: str) -> None:
    run = ctr_run(containerd, ns, ref, "/component/hello.wasm")
    assert (run.returncode, run.stdout) == (0, "hello from a component\n"), describe(
        containerd, run
    )


def test_a_component_exit_err_gives_exit_code_1(
    containerd: PrivateContainerd, ns: str, ref: str
) -> None:
    run = ctr_run(containerd, ns, ref, "/component/exit.wasm")
    assert run.returncode == 1, describe(containerd, run)


# ------------------------------------------------------------------ a running task


@pytest.fixture
def sleeper(containerd: PrivateContainerd, ns: str, ref: str) -> Iterator[str]:
    """A detached ``sleep`` task (``ctr run -d``), RUNNING; killed and removed afterwards."""
    cid = new_id("sleep")
    try:
        run = ctr_run(
            containerd, ns, ref, "/bin/sleep.wasm", "600", flags=("-d",), container_id=cid, rm=False
        )
        assert run.returncode == 0, describe(containerd, run)
        yield cid
    finally:
        remove_container(containerd, ns, cid)


def test_task_ls_shows_running_and_ps_lists_its_pid(
    containerd: PrivateContainerd, ns: str, sleeper: str
) -> None:
    assert task_status(containerd, ns, sleeper) == "RUNNING"
    pid = task_pid(containerd, ns, sleeper)
    table = containerd.ctr("task", "ps", sleeper, namespace=ns).stdout
    listed = [int(line.split()[0]) for line in table.splitlines()[1:] if line.strip()]
    assert pid in listed, table
    # The pid is a live process inside the container's cgroup (spec cgroupsPath /<ns>/<id>).
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/{ns}/{sleeper}" in cgroups, cgroups


def test_task_metrics_prints_memory_and_cpu(
    containerd: PrivateContainerd, ns: str, sleeper: str
) -> None:
    table = containerd.ctr("task", "metrics", sleeper, namespace=ns).stdout
    assert "memory" in table and ("cpu" in table), table
    raw = containerd.ctr("task", "metrics", "--format", "json", sleeper, namespace=ns).stdout
    data = json.loads(raw)
    memory, cpu = data.get("memory") or {}, data.get("cpu") or {}
    if "usage_usec" in cpu:  # cgroup v2 metrics
        memory_usage, cpu_usage = memory.get("usage", 0), cpu["usage_usec"]
    else:  # cgroup v1 metrics
        memory_usage = (memory.get("usage") or {}).get("usage", 0)
        cpu_usage = (cpu.get("usage") or {}).get("total", 0)
    assert memory_usage > 0, raw
    assert cpu_usage > 0, raw
    assert (data.get("pids") or {}).get("current", 0) >= 1, raw


def test_killing_a_running_task_stops_it(
    containerd: PrivateContainerd, ns: str, sleeper: str
) -> None:
    containerd.ctr("task", "kill", "-s", "SIGTERM", sleeper, namespace=ns)
    wait_for_status(containerd, ns, sleeper, "STOPPED")
