"""A private containerd for tests and the demo: its own root, state, sockets and PATH.

``PrivateContainerd`` runs a containerd (Debian's 1.6 ``/usr/bin/containerd`` by default; 1.7 or 2.x
built from the Go proxy when ``TEST_CONTAINERD`` says so, see tests/versions.py, with their own
``ctr`` and runc shim) with a config.toml it writes under
a fresh base directory (``<repo>/.cache/containerd/c-XXXX``), so several test runs (and the
machine's own containerd, if any) never share anything but ``/run/containerd/s`` and
``/run/containerd/fifo``, whose entries are named by hashes and random names. containerd's PATH
is a private bin dir holding ``containerd-shim-wasmtime-v1`` (a symlink to the venv's console
script; for a built release also that release's ``containerd-shim-runc-v2``) followed by the
system dirs, so ``runc`` and Debian's runc shim are found too.

Leaks are what a run must not leave behind: shim processes (found by ``-address <our socket>``
in their command line, or ``TTRPC_ADDRESS=<our ttrpc socket>`` in their environment, which
also catches the processes a shim forks), mounts under our root/state, shim sockets in
``/run/containerd/s`` and task bundles. A shim's socket path is
``/run/containerd/s/<sha256(address/namespace/id)>``; to know which ids to hash, a ``ctr
events`` subscriber records every container ever created.

With ``cri=True`` the CRI plugin is configured for the kubelet-like tests (``tests/cri.py``):
the sandbox image is a locally built pause image (``sandbox_image``), the default handler is
runc with its state under our ``state``, a ``wasmtime`` handler points at this shim with the
crun-style annotations passed through, and CNI looks only in empty private directories, so
only host-network pods can start and nothing ever reads the machine's CNI config. CRI keeps
its own root and state inside ours, so nothing of a CRI run lands in the system's dirs.

Usable without pytest::

    with PrivateContainerd() as c:
        print(c.ctr("version").stdout)
    # c.stop() ran: c.stop_report lists what had to be cleaned
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests import versions

REPO = Path(__file__).resolve().parents[1]
CONTAINERD = Path("/usr/bin/containerd")
CTR = Path("/usr/bin/ctr")
SHIM_NAME = "containerd-shim-wasmtime-v1"
RUNTIME = "io.containerd.wasmtime.v1"
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CRI_NAMESPACE = "k8s.io"
WASMTIME_HANDLER = "wasmtime"
# On the localhost registry: a pull of it (image not imported yet) can only reach loopback.
DEFAULT_SANDBOX_IMAGE = "localhost/cri-testbed/pause:1"
# Annotations containerd copies from a pod's (and a container's) config into the OCI spec of
# wasmtime-handled containers: the crun-compatible wasm selectors.
WASM_ANNOTATIONS = ("module.wasm.image/*", "run.oci.handler")
TASK_PLUGIN_DIR = "io.containerd.runtime.v2.task"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Linux's sun_path is 108 bytes; Go rejects >= 107 and shims keep a margin: stay well under.
MAX_SOCKET_PATH = 100
MNT_DETACH = 2
_CONFIG_TEMPLATE = """\
version = 2
root = {root}
state = {state}
disabled_plugins = {disabled}

[grpc]
  address = {address}

[ttrpc]
  address = {ttrpc}

[debug]
  level = {level}

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"""
_CRI_TEMPLATE = """
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox_image}
  disable_apparmor = true
  # Never below containerd's own oom_score_adj: the sandbox's -998 needs CAP_SYS_RESOURCE,
  # which a containerised test machine may lack (runc init then dies with "Permission denied").
  restrict_oom_score_adj = true
  enable_tls_streaming = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = {runc_root}

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{handler}]
      runtime_type = {runtime}
      pod_annotations = {annotations}
      container_annotations = {annotations}
"""


class LeakKind(enum.Enum):
    PROCESS = "process"
    MOUNT = "mount"
    SOCKET = "socket"
    BUNDLE = "bundle"


@dataclass(frozen=True, slots=True)
class Leak:
    """One thing left behind. ``namespace`` is None when it cannot be attributed to one."""

    kind: LeakKind
    what: str
    namespace: str | None = None

    def __str__(self) -> str:
        where = f" [ns {self.namespace}]" if self.namespace else ""
        return f"{self.kind.value}: {self.what}{where}"


class ContainerdError(RuntimeError):
    """containerd or ctr misbehaved; the message carries ctr's output and containerd's log."""


def default_shim() -> Path:
    """The project's console script in the running venv (``<venv>/bin/containerd-shim-...``)."""
    return Path(sys.prefix) / "bin" / SHIM_NAME


def shim_socket_path(address: str | Path, namespace: str, container_id: str) -> Path:
    """Where a shim started by containerd at ``address`` listens for (namespace, id).

    containerd 1.6 hashes ``filepath.Join(address, namespace, id)``: the joined, cleaned path.
    """
    joined = os.path.normpath(os.path.join(str(address), namespace, container_id))
    return SHIM_SOCKET_DIR / hashlib.sha256(joined.encode()).hexdigest()


class PrivateContainerd:
    """One containerd process and everything it owns; see the module docstring."""

    def __init__(
        self,
        base: Path | None = None,
        *,
        cri: bool = False,
        sandbox_image: str = DEFAULT_SANDBOX_IMAGE,
        cri_extra_toml: str = "",
        shim: Path | None = None,
        log_level: str = "debug",
        keep: bool = False,
        start_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        release: versions.Release | None = None,
        netns: Path | None = None,
    ) -> None:
        """Prepare (not start) a containerd.

        ``base``: the private directory (default: a fresh ``<repo>/.cache/containerd/c-XXXX``,
        or one under /tmp when the repo path would make socket paths too long). ``cri``: leave
        the CRI plugin enabled and configure it (see the module docstring); ``sandbox_image``
        is the pause image it uses, which must be imported into ``CRI_NAMESPACE`` before the
        first RunPodSandbox; ``cri_extra_toml`` is appended to the config verbatim (e.g. the
        options table of a runtime handler). ``shim``: the shim executable to expose on PATH.
        ``keep``: do not delete ``base`` on stop (for post-mortems). ``env``: more environment
        for containerd, and so for its shims (say ``WASMTIME_SHIM_CACHE_DIR``). ``release``:
        which containerd (default: the one ``TEST_CONTAINERD`` selects); it must be built
        already (``versions.ensure``), which the fixtures do. ``netns``: a network namespace
        file (``ip netns add``) containerd runs in, joined with ``nsenter --net`` alone (so it
        keeps the host's mount namespace, unlike ``ip netns exec``): its CNI plugins then make
        their bridges and veths there, never in the host's network.
        """
        self.netns = netns
        self.binaries = versions.binaries(release or versions.selected())
        self.ctr_bin = self.binaries.ctr
        self.base = base or _fresh_base()
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.bin_dir = self.base / "bin"
        self.config_path = self.base / "config.toml"
        self.log_path = self.base / "containerd.log"
        self.events_path = self.base / "events.log"
        self.address = self.base / "c.sock"
        self.ttrpc_address = Path(f"{self.address}.ttrpc")
        self.cri = cri
        self.sandbox_image = sandbox_image
        self.cri_extra_toml = cri_extra_toml
        self.cri_dir = self.base / "cri"  # empty CNI dirs and registry hosts dir
        self.shim = shim or default_shim()
        self.log_level = log_level
        self.keep = keep
        self.start_timeout = start_timeout
        self.stop_report: list[Leak] = []
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: subprocess.Popen[bytes] | None = None
        if len(str(self.ttrpc_address)) > MAX_SOCKET_PATH:
            raise ContainerdError(f"socket path {self.ttrpc_address} is too long for AF_UNIX")

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> PrivateContainerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PrivateContainerd:
        """Write the config, start containerd, wait until ``ctr version`` answers."""
        if self._proc is not None:
            raise ContainerdError("this containerd was already started")
        if not self.shim.exists():
            raise ContainerdError(f"shim {self.shim} does not exist (is the project installed?)")
        dirs = [self.root, self.state, self.bin_dir]
        if self.cri:
            dirs += [self.cri_dir / "cni-bin", self.cri_dir / "cni-conf", self.cri_dir / "certs.d"]
        for path in dirs:
            path.mkdir(parents=True, exist_ok=True)
        for name, target in self._path_links().items():
            link = self.bin_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        self.config_path.write_text(self.config_toml())
        env = {"PATH": f"{self.bin_dir}:{SYSTEM_PATH}", "HOME": "/root", "LANG": "C.UTF-8"}
        env.update(self.env)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    *self._netns_prefix(),
                    str(self.binaries.containerd),
                    "--config",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
            self._start_event_recorder()
        except BaseException:
            self.stop()
            raise
        return self

    def _netns_prefix(self) -> list[str]:
        return ["/usr/bin/nsenter", f"--net={self.netns}", "--"] if self.netns else []

    def _path_links(self) -> dict[str, Path]:
        """What goes into the private bin dir (first on containerd's PATH), by name."""
        links = {SHIM_NAME: self.shim}
        if self.binaries.runc_shim.parent != versions.DEBIAN_BIN:
            links[self.binaries.runc_shim.name] = self.binaries.runc_shim
        return links

    def restart(self) -> None:
        """Stop containerd alone and start it again, as `systemctl restart containerd` does:
        its shims (and the shim's warm runtime) go on, and it reconnects to them."""
        if self._events is not None:
            _terminate(self._events, timeout=5)
            self._events = None
        if self._proc is not None and self._proc.poll() is None:
            _terminate(self._proc, timeout=15)
        self._proc = None
        self.start()

    def config_toml(self) -> str:
        """containerd's config.toml (version 2) for this instance; ``opt`` stays private too."""
        disabled = [] if self.cri else [CRI_PLUGIN]
        text = _CONFIG_TEMPLATE.format(
            root=_toml(self.root),
            state=_toml(self.state),
            disabled=json.dumps(disabled),
            address=_toml(self.address),
            ttrpc=_toml(self.ttrpc_address),
            level=_toml(self.log_level),
            opt=_toml(self.base / "opt"),
        )
        if self.binaries.major >= 2:
            text += _unpack_platforms_toml()
        if not self.cri:
            return text
        text += _CRI_TEMPLATE.format(
            sandbox_image=_toml(self.sandbox_image),
            cni_bin=_toml(self.cri_dir / "cni-bin"),
            cni_conf=_toml(self.cri_dir / "cni-conf"),
            registry=_toml(self.cri_dir / "certs.d"),
            runc_root=_toml(self.state / "runc"),
            handler=WASMTIME_HANDLER,
            runtime=_toml(RUNTIME),
            annotations=json.dumps(list(WASM_ANNOTATIONS)),
        )
        return text + self.cri_extra_toml

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self._proc.returncode} while starting\n"
                    + self.log_tail()
                )
            if self.address.exists():
                result = self._run_ctr(["version"], namespace="default", timeout=5, input=None)
                if result.returncode == 0:
                    return
                last = result.stderr
            time.sleep(0.05)
        raise ContainerdError(
            f"containerd did not answer `ctr version` within {self.start_timeout}s: {last}\n"
            + self.log_tail()
        )

    def _start_event_recorder(self) -> None:
        """Record every event (mainly /containers/create) so stop() knows which ids to hash."""
        with self.events_path.open("ab") as out:
            self._events = subprocess.Popen(
                [str(self.ctr_bin), "--address", str(self.address), "events"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def stop(self) -> list[Leak]:
        """Stop containerd and clean up whatever it left; return (and print) what was cleaned.

        The list is also kept in ``stop_report``. Idempotent.
        """
        if self._proc is None:
            return self.stop_report
        known = self._known_containers()
        if self._events is not None:
            _terminate(self._events, timeout=5)
            self._events = None
        if self._proc.poll() is None:
            _terminate(self._proc, timeout=15)
        self.stop_warm_runtime()
        report = self.clean(known=known)
        self.stop_report = report
        if report:
            print(f"PrivateContainerd({self.base}) cleaned up after stop:", file=sys.stderr)
            for leak in report:
                print(f"  {leak}", file=sys.stderr)
        if not self.keep and not _mounts_under([self.base]):
            shutil.rmtree(self.base, ignore_errors=True)
        return report

    # ----------------------------------------------------------------- warm runtime

    def warm_runtime_pid(self) -> int | None:
        """The pid of the shim's warm runtime serving this containerd, if one is alive."""
        return warm_runtime_pid(str(self.address))

    def stop_warm_runtime(self, timeout: float = 10.0) -> bool:
        """Retire this containerd's warm runtime (it belongs to the containerd, not to any
        namespace, so it is stopped with it, not counted as a leak). Whether one ran."""
        return stop_warm_runtime(str(self.address), timeout)

    # ----------------------------------------------------------------- ctr

    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        timeout: float = 60.0,
        input: str | bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run this release's ``ctr --address <ours> --namespace <namespace> *args``.

        Output is returned as text. With ``check``, a non-zero exit raises ContainerdError
        carrying stdout, stderr and the tail of containerd's log; a timeout always raises.
        """
        result = self._run_ctr(list(args), namespace=namespace, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise ContainerdError(
                f"ctr {' '.join(args)} failed with exit {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n" + self.log_tail()
            )
        return result

    def _run_ctr(
        self, args: list[str], *, namespace: str, timeout: float, input: str | bytes | None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.ctr_bin), "--address", str(self.address), "--namespace", namespace, *args]
        data = input.encode() if isinstance(input, str) else input
        try:
            raw = subprocess.run(
                cmd,
                input=data,
                stdin=subprocess.DEVNULL if data is None else None,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ContainerdError(
                f"ctr {' '.join(args)} did not finish within {timeout}s\n"
                f"stdout so far: {_text(exc.stdout)}\nstderr so far: {_text(exc.stderr)}\n"
                + self.log_tail()
            ) from exc
        return subprocess.CompletedProcess(
            cmd, raw.returncode, _text(raw.stdout), _text(raw.stderr)
        )

    def import_image(self, archive: Path, *, namespace: str = "default") -> str:
        """``ctr image import`` an OCI archive, unpacked for its platform; returns ctr's output.

        An archive whose index names one platform is imported with ``--platform OS/ARCH``:
        without a flag ctr 1.6 filters a wasip1/wasm manifest out, and with
        ``--all-platforms`` ctr 2.x imports it but unpacks only the host's platform, so the
        CRI plugin finds no snapshot for it (``parent snapshot ... does not exist``).
        """
        platforms = _archive_platforms(archive)
        flags = ["--platform", platforms[0]] if len(platforms) == 1 else ["--all-platforms"]
        return self.ctr("image", "import", *flags, str(archive), namespace=namespace).stdout

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of containerd's log, headed, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no containerd log: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def shim_socket(self, namespace: str, container_id: str) -> Path:
        return shim_socket_path(self.address, namespace, container_id)

    # ----------------------------------------------------------------- leaks

    def leaks(self, namespace: str | None = None) -> list[Leak]:
        """Everything currently left behind (optionally: attributable to ``namespace``).

        Mounts under the snapshotter's root belong to no namespace and are only listed when
        ``namespace`` is None; so are processes whose namespace cannot be read.
        """
        return self._find_leaks(self._known_containers(), namespace)

    def wait_for_no_leaks(self, namespace: str | None = None, timeout: float = 10.0) -> list[Leak]:
        """Give shims time to exit after their last task; return what is still left after."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.leaks(namespace)
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def clean(
        self,
        namespace: str | None = None,
        known: set[tuple[str, str]] | None = None,
    ) -> list[Leak]:
        """Kill leftover shims, unmount, remove sockets and bundles; return what was found."""
        found = self._find_leaks(
            known if known is not None else self._known_containers(), namespace
        )
        for leak in found:
            if leak.kind is LeakKind.PROCESS:
                _kill(int(leak.what.split()[0]))
        for leak in sorted(
            (leak for leak in found if leak.kind is LeakKind.MOUNT),
            key=lambda leak: leak.what.count("/"),
            reverse=True,
        ):
            _umount(leak.what)
        for leak in found:
            if leak.kind is LeakKind.SOCKET:
                Path(leak.what).unlink(missing_ok=True)
            elif leak.kind is LeakKind.BUNDLE and not _mounts_under([Path(leak.what)]):
                shutil.rmtree(leak.what, ignore_errors=True)
        return found

    def _find_leaks(self, known: set[tuple[str, str]], namespace: str | None) -> list[Leak]:
        leaks: list[Leak] = []
        processes = self._shim_processes()
        for pid, ns, cmdline in processes:
            if namespace is None or ns == namespace:
                leaks.append(Leak(LeakKind.PROCESS, f"{pid} {cmdline}", ns))

        bundles = self.state / TASK_PLUGIN_DIR
        if namespace is None:
            for mount in _mounts_under([self.root, self.state]):
                leaks.append(Leak(LeakKind.MOUNT, str(mount), _namespace_of(mount, bundles)))
        else:
            for mount in _mounts_under([bundles / namespace]):
                leaks.append(Leak(LeakKind.MOUNT, str(mount), namespace))

        for bundle in _bundles(bundles):
            ns = bundle.parent.name
            if namespace is None or ns == namespace:
                leaks.append(Leak(LeakKind.BUNDLE, str(bundle), ns))

        candidates = set(known)
        candidates |= {(b.parent.name, b.name) for b in _bundles(bundles)}
        for _pid, ns, cmdline in processes:
            match = re.search(r"(?:^|\s)-id (\S+)", cmdline)
            if ns and match:
                candidates.add((ns, match.group(1)))
        for ns, container_id in sorted(candidates):
            if namespace is not None and ns != namespace:
                continue
            sock = self.shim_socket(ns, container_id)
            if sock.exists() or sock.is_symlink():
                leaks.append(Leak(LeakKind.SOCKET, str(sock), ns))
        return leaks

    def _shim_processes(self) -> list[tuple[int, str | None, str]]:
        """(pid, namespace or None, cmdline) of every process serving our containerd."""
        address = str(self.address)
        ttrpc_env = f"TTRPC_ADDRESS={self.ttrpc_address}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [arg.decode(errors="replace") for arg in argv if arg]
            pairs = list(itertools.pairwise(args))
            if ("-address", address) in pairs or ttrpc_env in environ:
                ns = next((b for a, b in pairs if a == "-namespace"), None)
                found.append((int(proc.name), ns, " ".join(args)))
        return found

    def _known_containers(self) -> set[tuple[str, str]]:
        """(namespace, id) of every container the event recorder saw, plus current ones."""
        known: set[tuple[str, str]] = set()
        with contextlib.suppress(OSError):
            for line in self.events_path.read_text(errors="replace").splitlines():
                match = re.search(r" (\S+) /containers/create (\{.*\})\s*$", line)
                if not match:
                    continue
                with contextlib.suppress(ValueError):
                    container_id = json.loads(match.group(2)).get("id")
                    if container_id:
                        known.add((match.group(1), container_id))
        if self.running:
            with contextlib.suppress(ContainerdError):
                for ns in self.ctr("namespaces", "ls", "-q", timeout=10).stdout.split():
                    ids = self.ctr("containers", "ls", "-q", namespace=ns, timeout=10).stdout
                    known |= {(ns, cid) for cid in ids.split()}
        return known


# --------------------------------------------------------------------- helpers


def sweep_stale(min_age: float = 60.0) -> list[Leak]:
    """Clean the leftovers of instances whose test run died (e.g. killed by a timeout).

    A base dir under ``<repo>/.cache/containerd`` older than ``min_age`` seconds whose
    containerd is no longer running gets its shims killed, mounts unmounted, sockets and the
    dir removed. A containerd still running is left alone, even an orphaned one (reported on
    stderr): it may belong to a concurrent run. Returns what was cleaned.
    """
    parent = REPO / ".cache" / "containerd"
    cleaned: list[Leak] = []
    live = _live_containerd_configs()
    for base in sorted(parent.glob("c-*")) if parent.is_dir() else []:
        config = base / "config.toml"
        if time.time() - base.stat().st_mtime < min_age:
            continue
        if str(config) in live:
            if live[str(config)] == 1:
                print(f"orphaned containerd still running for {base}", file=sys.stderr)
            continue
        found = PrivateContainerd(base).clean()
        cleaned += found
        if not _mounts_under([base]):
            shutil.rmtree(base, ignore_errors=True)
    return cleaned


def _live_containerd_configs() -> dict[str, int]:
    """{config path: parent pid} of every running containerd started with ``--config``."""
    live: dict[str, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(args[0]).name == "containerd" and "--config" in args:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                live[args[args.index("--config") + 1]] = int(stat[1])
    return live


def _unpack_platforms_toml() -> str:
    """containerd 2.x's transfer service (which its ``ctr image import`` and pulls go
    through) unpacks only the platforms its ``unpack_config`` lists, by default the host's;
    a wasm image imported without one of its platforms there fails ("no unpack platforms
    defined"). So the host's platform and both wasm ones, as a node running wasm sets it;
    the wasm ones name their differ, since no diff plugin declares a wasm platform (without
    it the transfer plugin fails to load: "no matching diff plugins")."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    table = '[[plugins."io.containerd.transfer.v1.local".unpack_config]]'
    entries = [(f"linux/{arch}", ""), ("wasip1/wasm", "walking"), ("wasip2/wasm", "walking")]
    return "".join(
        f'\n{table}\n  platform = "{name}"\n  snapshotter = "overlayfs"\n'
        + (f'  differ = "{differ}"\n' if differ else "")
        for name, differ in entries
    )


def _archive_platforms(archive: Path) -> list[str]:
    """The distinct ``os/architecture`` of the manifests an OCI archive's index lists."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        index = json.load(member) if member is not None else {}
    found = []
    for entry in index.get("manifests", []):
        platform = entry.get("platform") or {}
        name = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
        if name != "/" and name not in found:
            found.append(name)
    return found


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the Python process that started us dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _fresh_base() -> Path:
    parent = REPO / ".cache" / "containerd"
    # "<parent>/c-xxxxxxxx/c.sock.ttrpc" must fit; fall back to /tmp for deep checkouts.
    if len(str(parent)) + len("/c-xxxxxxxx/c.sock.ttrpc") > MAX_SOCKET_PATH:
        parent = Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="c-", dir=parent))


def _toml(value: object) -> str:
    # A JSON string is a valid TOML basic string for the paths and words we write.
    return json.dumps(str(value))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until it is gone (reaped by its parent or by init)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A zombie counts as gone: reaping is its parent's business (maybe our caller's Popen).
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)


def warm_runtime_pid(address: str) -> int | None:
    """The pid of the shim's warm runtime for the containerd at ``address``, if one lives."""
    from shim.warm import protocol

    try:
        pid = int(Path(protocol.control_path(address, ".pid")).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"warm" in cmdline and address.encode() in cmdline else None


def stop_warm_runtime(address: str, timeout: float = 10.0) -> bool:
    """Retire the warm runtime of the containerd at ``address``, even one still booting (it
    holds its lock from the first moment), and wait until it is gone (SIGKILL after
    ``timeout``); remove its control files. Whether one ran."""
    from shim.warm import client, launch, protocol

    deadline = time.monotonic() + timeout
    found = False
    seen: set[int] = set()
    while True:
        lock = launch.take_lock(address)
        if lock is not None:  # nobody holds it: no runtime lives for this containerd
            os.close(lock)
            break
        found = True
        pid = warm_runtime_pid(address)
        if pid is not None:
            seen.add(pid)
            with contextlib.suppress(client.Unreachable):
                client.call(address, "retire", timeout=2)
            if time.monotonic() > deadline and alive(pid):
                _kill(pid)
        elif time.monotonic() > deadline + timeout:
            raise ContainerdError(f"a warm runtime holds {address}'s lock and never answers")
        time.sleep(0.02)
    # A retiring runtime gives its lock up first (so a successor may start) and then exits:
    # wait for that too, or a leak check right after would catch it on its way out.
    for pid in seen:
        while alive(pid) and time.monotonic() < deadline + timeout:
            time.sleep(0.02)
        if alive(pid):
            _kill(pid)
    for suffix in (".sock", ".lock", ".pid", ".log", ".log.1", ".failed"):
        Path(protocol.control_path(address, suffix)).unlink(missing_ok=True)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\NNN``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts_under(dirs: Iterable[Path]) -> list[Path]:
    """Mount points at or below any of ``dirs``, deepest first."""
    prefixes = [str(d).rstrip("/") for d in dirs]
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        print(f"umount {path}: {os.strerror(err)}", file=sys.stderr)


def _bundles(task_dir: Path) -> list[Path]:
    try:
        return sorted(b for ns in task_dir.iterdir() if ns.is_dir() for b in ns.iterdir())
    except OSError:
        return []


def _namespace_of(mount: Path, bundles: Path) -> str | None:
    try:
        return mount.relative_to(bundles).parts[0]
    except (ValueError, IndexError):
        return None
