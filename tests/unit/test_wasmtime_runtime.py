"""WasmtimeRuntime end to end on real wasm, through the real container-process code, without
containerd.

Each case runs in a fresh interpreter that plays the spawner: it calls `resolve()` and
`warm()` (which creates the shared Engine), then forks, and the child runs
`shim.proc.child.run_child` exactly as a container process does (signal reset, chdir,
`load()`, `prepare()`, ready report, `run()`). The test reads the child's stdout and stderr
from files and the verdict (exit status, the ready pipe's error, thread count after warm)
from a JSON file. The same file is the driver: run as a script, it executes `_spawn`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtimes.base import CacheSettings, Preopen, RunConfig
from shim import errors
from shim.errors import ShimError

WAT_DIR = Path(__file__).resolve().parents[1] / "wasm" / "wat"
LEAK = "SHIM_TEST_MUST_NOT_LEAK"


# --------------------------------------------------------------------------- the driver


def _spawn(spec_path: str, result_path: str) -> None:
    """Resolve, warm, fork; the child is a real container process (shim/proc/child.py)."""
    from runtimes.wasmtime import WasmtimeRuntime
    from shim.proc.child import ProcessSetup, decode_report, run_child

    spec = json.loads(Path(spec_path).read_text())
    cfg_fields = dict(spec["cfg"])
    cfg_fields["args"] = tuple(cfg_fields["args"])
    cfg_fields["env"] = tuple(cfg_fields["env"])
    cfg_fields["preopens"] = tuple(Preopen(**p) for p in cfg_fields["preopens"])
    cfg_fields["cache"] = CacheSettings(**cfg_fields["cache"]) if cfg_fields["cache"] else None
    cfg = RunConfig(**cfg_fields)
    runtime = WasmtimeRuntime()
    result: dict[str, Any] = {}
    try:
        entry = runtime.resolve(cfg, spec["path_env"])
    except ShimError as e:
        result["error"] = {"stage": "resolve", "kind": type(e).__name__, "message": str(e)}
        Path(result_path).write_text(json.dumps(result))
        return
    runtime.warm()
    result["threads_after_warm"] = len(os.listdir("/proc/self/task"))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        run_child(runtime, cfg, entry, ProcessSetup(host_cwd=spec["host_cwd"]), (0, 1, 2), ready_w)
    os.close(ready_w)
    chunks = []
    while chunk := os.read(ready_r, 65536):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    failure = decode_report(b"".join(chunks)) if chunks else None
    if failure is not None:
        code, message = failure
        kind = type(errors.from_status(int(code), message)).__name__
        result["error"] = {"stage": "prepare", "kind": kind, "message": message}
    result["exit"] = os.waitstatus_to_exitcode(status)
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _spawn(sys.argv[1], sys.argv[2])
    sys.exit(0)


# --------------------------------------------------------------------------- helpers


@dataclass
class Outcome:
    exit: int | None
    stdout: bytes
    stderr: bytes
    error: dict[str, str] | None
    threads_after_warm: int | None


@dataclass
class Container:
    """A temp rootfs plus the RunConfig fields a test may change before `launch()`."""

    root: Path
    work: Path
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    mounts: list[Preopen] = field(default_factory=list)
    memory_limit: int | None = None
    cache: CacheSettings | None = None
    readonly_root: bool = False

    def add(self, guest: str, wat_name: str, *, binary: bool = True) -> str:
        """Put tests/wasm/wat/<wat_name> at `guest` in the rootfs, as .wasm (or as text)."""
        import wasmtime  # only wat2wasm: creates no Engine in this process

        text = (WAT_DIR / wat_name).read_text()
        data = bytes(wasmtime.wat2wasm(text)) if binary else text.encode()
        dest = self.root / guest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return guest

    def add_program(self, guest: str, wasm: Path) -> str:
        """Put a built program (tests/wasm/c) at `guest` in the rootfs."""
        dest = self.root / guest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wasm, dest)
        return guest

    def launch(self, path_env: str | None = None) -> Outcome:
        cfg = RunConfig(
            container_id="c1",
            rootfs=str(self.root),
            args=tuple(self.args),
            env=tuple(self.env),
            cwd=self.cwd,
            preopens=(Preopen(str(self.root), "/", self.readonly_root), *self.mounts),
            memory_limit=self.memory_limit,
            cache=self.cache,
        )
        spec = {"cfg": asdict(cfg), "path_env": path_env, "host_cwd": str(self.root)}
        spec_path, result_path = self.work / "spec.json", self.work / "result.json"
        spec_path.write_text(json.dumps(spec))
        result_path.unlink(missing_ok=True)
        out_path, err_path = self.work / "stdout", self.work / "stderr"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), LEAK: "leaked"}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.run(
                [sys.executable, __file__, str(spec_path), str(result_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                timeout=300,  # a guard against a hang, not an assertion about speed
            )
        assert proc.returncode == 0, err_path.read_text()
        result = json.loads(result_path.read_text())
        return Outcome(
            exit=result.get("exit"),
            stdout=out_path.read_bytes(),
            stderr=err_path.read_bytes(),
            error=result.get("error"),
            threads_after_warm=result.get("threads_after_warm"),
        )


@pytest.fixture
def box(tmp_path: Path) -> Container:
    root = tmp_path / "rootfs"
    root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    return Container(root=root, work=work)


# --------------------------------------------------------------------------- core modules


def test_args_env_and_proc_exit_arrive_exactly(box: Container) -> None:
    box.add("/app/echo.wasm", "echo.wat")
    box.args = ["/app/echo.wasm", "first arg", "--flag=x", ""]
    box.env = ["A=1", "B=two words", "EMPTY=", "PATH=/bin"]
    out = box.launch()
    assert out.error is None
    assert out.exit == 42
    assert out.stdout == b"hello from wasm\n" + b"".join(a.encode() + b"\0" for a in box.args)
    assert out.stderr == b"".join(e.encode() + b"\0" for e in box.env)
    assert LEAK.encode() not in out.stderr
    assert out.threads_after_warm == 1


def test_wat_text_is_an_entrypoint_and_found_relative_to_cwd(box: Container) -> None:
    box.add("/app/echo.wat", "echo.wat", binary=False)
    box.args, box.cwd = ["echo.wat"], "/app"
    out = box.launch()
    assert (out.error, out.exit) == (None, 42)
    assert out.stdout.startswith(b"hello from wasm\n")


def test_entrypoint_found_through_spec_path(box: Container) -> None:
    box.add("/opt/tools/echo.wasm", "echo.wat")
    box.args, box.env = ["echo.wasm"], ["PATH=/usr/bin:/opt/tools"]
    out = box.launch("/usr/bin:/opt/tools")  # the daemon reads PATH from the spec's env
    assert (out.error, out.exit) == (None, 42)


def test_readonly_and_readwrite_preopens(box: Container, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data.txt").write_text("read-only data\n")
    box.add("/fs.wasm", "fs.wat")
    box.args = ["/fs.wasm"]
    box.mounts = [Preopen(str(ro), "/ro", True), Preopen(str(rw), "/rw", False)]
    out = box.launch()
    assert (out.error, out.exit) == (None, 0), out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0:2] == ["ro-read: 00", "read-only data"]
    assert lines[2].startswith("ro-create: ") and lines[2] != "ro-create: 00"
    assert lines[3].startswith("ro-write: ") and lines[3] != "ro-write: 00"
    assert lines[4] == "rw-create: 00"
    assert sorted(os.listdir(ro)) == ["data.txt"]
    assert (ro / "data.txt").read_text() == "read-only data\n"
    assert (rw / "out.txt").read_text() == "written\n"


def test_trap_exits_134_with_reason_on_stderr(box: Container) -> None:
    box.args = [box.add("/trap.wasm", "trap.wat")]
    out = box.launch()
    assert (out.error, out.exit) == (None, 134)
    assert out.stdout == b"about to trap\n"
    first = out.stderr.decode().splitlines()[0]
    assert first.startswith("wasm trap: ")
    assert "unreachable" in first


def test_out_of_bounds_access_traps_after_fork_and_signal_reset(box: Container) -> None:
    box.args = [box.add("/oob.wasm", "oob.wat")]
    out = box.launch()
    assert (out.error, out.exit) == (None, 134), out.stderr
    assert "out of bounds memory access" in out.stderr.decode().splitlines()[0]


@pytest.mark.parametrize("pages", [32, 64])
def test_memory_bomb_stops_at_the_limit(box: Container, pages: int) -> None:
    box.args = [box.add("/memgrow.wasm", "memgrow.wat")]
    box.memory_limit = pages * 65536
    out = box.launch()
    assert (out.error, out.exit) == (None, pages)


def test_memory_minimum_above_the_limit_fails_prepare(box: Container) -> None:
    box.args = [box.add("/bigmem.wasm", "bigmem.wat")]
    assert box.launch().exit == 0  # 64 MiB is fine without a limit
    box.memory_limit = 1 << 20
    out = box.launch()
    assert out.error is not None
    assert (out.error["stage"], out.error["kind"]) == ("prepare", "FailedPrecondition")
    assert "/bigmem.wasm" in out.error["message"]
    assert "memory limits" in out.error["message"]


# fd_renumber onto a closed descriptor (runtimes/wasmtime/renumber.py). The C programs say
# what each line means; "8" is EBADF.


@pytest.mark.parametrize("readonly_root", [False, True])
def test_stdout_renumbered_away_and_back_survives(
    box: Container, tmp_path: Path, build_wasm: Callable[[str], Path], readonly_root: bool
) -> None:
    rw = tmp_path / "rw"
    rw.mkdir()
    box.readonly_root = readonly_root  # the placeholder is opened in a read-only directory
    box.mounts = [Preopen(str(rw), "/rw", False)]
    box.args = [box.add_program("/redirect.wasm", build_wasm("redirect")), "/rw/cap.txt", "500"]
    out = box.launch()
    assert (out.error, out.exit) == (None, 3), out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "before"
    assert lines[1:501] == [f"out {i}" for i in range(1, 501)]
    # fd_renumber(w, 2) fails: w has already moved to 1 (as under dup2-less wasmtime 36).
    assert lines[501:] == ["file: captured", "renumber: 0 0 0 8 0 0"]
    errs = out.stderr.decode().splitlines()
    assert errs == ["before (stderr)", *(f"err {i}" for i in range(1, 501))]


def test_fd_renumber_edges(
    box: Container, tmp_path: Path, build_wasm: Callable[[str], Path]
) -> None:
    rw = tmp_path / "rw"
    rw.mkdir()
    box.mounts = [Preopen(str(rw), "/rw", False)]
    box.args = [box.add_program("/renumber.wasm", build_wasm("renumber")), "/rw"]
    out = box.launch()
    assert (out.error, out.exit, out.stderr) == (None, 0, b"")
    assert out.stdout.decode().splitlines() == [
        "onto-open 0 source-open=0",
        "onto-closed 0 wrote=7 read=7 text=landed",
        "never-used 0 target-open=1 source-open=0",
        "same 0 open=1",
        "closed-source 8 target-open=0",
        "far-target 8 source-open=1",
        "opens-after 1",
    ]


def test_unknown_import_traps_only_when_called(box: Container) -> None:
    box.add("/u.wasm", "unknown_import.wat")
    box.args = ["/u.wasm#safe"]
    out = box.launch()
    assert (out.error, out.exit, out.stdout) == (None, 0, b"safe\n")
    box.args = ["/u.wasm"]
    out = box.launch()
    assert (out.error, out.exit) == (None, 134)
    assert "env::mystery_host_call" in out.stderr.decode().splitlines()[0]


def test_func_suffix_selects_the_export(box: Container) -> None:
    box.add("/f.wasm", "funcs.wat")
    box.args = ["/f.wasm"]
    assert box.launch().exit == 3
    box.args = ["/f.wasm#other"]
    out = box.launch()
    assert (out.error, out.exit, out.stdout) == (None, 0, b"other\n")


@pytest.mark.parametrize(
    ("arg0", "expect"),
    [("/f.wasm#nope", "'nope'"), ("/f.wasm#takes_arg", "takes parameters")],
)
def test_unusable_func_fails_prepare(box: Container, arg0: str, expect: str) -> None:
    box.add("/f.wasm", "funcs.wat")
    box.args = [arg0]
    out = box.launch()
    assert out.error is not None and out.error["kind"] == "FailedPrecondition"
    assert expect in out.error["message"]
    assert out.error["stage"] == "prepare"


def test_truncated_module_fails_prepare_with_wasmtimes_reason(box: Container) -> None:
    box.add("/t.wasm", "echo.wat")
    data = (box.root / "t.wasm").read_bytes()
    (box.root / "t.wasm").write_bytes(data[: len(data) // 2])
    box.args = ["/t.wasm"]
    out = box.launch()
    assert out.error is not None
    assert (out.error["stage"], out.error["kind"]) == ("prepare", "FailedPrecondition")
    assert "/t.wasm" in out.error["message"]
    assert "unexpected end" in out.error["message"]


def test_elf_is_refused_at_resolve(box: Container) -> None:
    (box.root / "bin").mkdir()
    shutil.copy(sys.executable, box.root / "bin" / "python")
    box.args = ["/bin/python"]
    out = box.launch()
    assert out.error == {  # NotWasm: a FailedPrecondition the shim may run natively in pods
        "stage": "resolve",
        "kind": "NotWasm",
        "message": "/bin/python is an ELF executable, not a wasm module",
    }


# --------------------------------------------------------------------------- components


def test_component_prints_through_wasi_streams(box: Container) -> None:
    box.args = [box.add("/hello.wasm", "hello_component.wat"), "ignored"]
    out = box.launch()
    assert (out.error, out.exit) == (None, 0), out.stderr
    assert out.stdout == b"hello from a component\n"


def test_component_wat_text_runs(box: Container) -> None:
    box.args = [box.add("/hello.wat", "hello_component.wat", binary=False)]
    out = box.launch()
    assert (out.error, out.exit, out.stdout) == (None, 0, b"hello from a component\n")


@pytest.mark.parametrize(
    ("wat", "suffix", "status"),
    [
        ("fail_component.wat", "", 1),  # run returns err
        ("fail_component.wat", "#succeed", 0),  # a top-level export returning ok
        ("exit_component.wat", "", 1),  # wasi:cli/exit(err)
    ],
)
def test_component_exit_status(box: Container, wat: str, suffix: str, status: int) -> None:
    box.args = [box.add("/c.wasm", wat) + suffix]
    out = box.launch()
    assert (out.error, out.exit) == (None, status), out.stderr


def test_component_missing_func_fails_prepare(box: Container) -> None:
    box.args = [box.add("/c.wasm", "fail_component.wat") + "#nope"]
    out = box.launch()
    assert out.error is not None and out.error["stage"] == "prepare"
    assert "'nope'" in out.error["message"]
    assert "succeed" in out.error["message"]  # lists what there is


# --------------------------------------------------------------------------- the compile cache


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.cwasm"))


def test_without_a_warm_runtime_the_process_compiles_into_the_cache_then_maps_it(
    box: Container, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    box.cache = CacheSettings(str(cache), 1 << 30)
    box.args = [box.add("/echo.wasm", "echo.wat")]
    assert box.launch().exit == 42
    [echo_entry] = _entries(cache)
    assert not list(cache.rglob(".tmp-*"))  # written atomically, nothing left over
    box.args = [box.add("/f.wasm", "funcs.wat")]
    assert box.launch().exit == 3
    [funcs_entry] = [p for p in _entries(cache) if p != echo_entry]
    # Prove the next run maps the cache: give echo's key funcs' (valid, verified) code.
    key = echo_entry.name.split("-", 1)[0]
    echo_entry.unlink()
    funcs_entry.rename(echo_entry.parent / (key + "-" + funcs_entry.name.split("-", 1)[1]))
    box.args = ["/echo.wasm"]
    assert box.launch().exit == 3


def test_a_cache_entry_damaged_in_the_middle_is_removed_and_recompiled(
    box: Container, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    box.cache = CacheSettings(str(cache), 1 << 30)
    box.args = [box.add("/echo.wasm", "echo.wat")]
    assert box.launch().exit == 42
    [entry] = _entries(cache)
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    entry.write_bytes(data)
    out = box.launch()
    assert (out.exit, out.error) == (42, None)
    [again] = _entries(cache)
    assert again.read_bytes() != bytes(data)


def test_component_with_a_non_wasi_import_fails_prepare_naming_it(box: Container) -> None:
    box.args = [box.add("/c.wasm", "custom_import_component.wat")]
    out = box.launch()
    assert out.error is not None
    assert (out.error["stage"], out.error["kind"]) == ("prepare", "FailedPrecondition")
    assert "acme:gadgets/widget@1.0.0" in out.error["message"]
