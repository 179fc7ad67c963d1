"""`wasmtime-shim install` / `uninstall`: binary in place, runtime in containerd's config.

Both are idempotent and non-interactive, for node images and DaemonSet installers. install
records what it did in a receipt (JSON) so uninstall takes back exactly that: the files it
placed, and the config edit (on the node itself it also stops the warm runtime of the binary
it removes, which nothing else would ever retire). When the config is byte-identical to what
install wrote, the original bytes come back from the backup (or the file is deleted if
install created it); when someone edited it since, only our table is removed, with the same
round-trip editor.

The receipt also remembers that the config changed and containerd has not been restarted
since (`restart_pending`): `install --restart` restarts only then, so a DaemonSet pod that
starts again on an unchanged node disrupts nothing, while an install whose restart failed (or
was never asked for) is still restarted by the next `--restart` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.errors import AlreadyExists, InvalidArgument
from shim.warm.protocol import CONTROL_DIR
from wasmtime_shim.node import config as cfg
from wasmtime_shim.node import files
from wasmtime_shim.node.flavors import ConfigEdit, Flavor

DEFAULT_BIN_DIR = "/usr/local/bin"
DEFAULT_LIB_DIR = "/usr/local/lib/containerd-shim-wasmtime"
RECEIPT = "/var/lib/containerd-shim-wasmtime/install.json"
BACKUP_SUFFIX = ".wasmtime-shim.bak"


@dataclass(frozen=True, slots=True)
class Target:
    """Where things go on the node (host paths) and how the runtime is registered."""

    flavor: Flavor
    root: Path = Path("/")
    bin_dir: str = DEFAULT_BIN_DIR
    lib_dir: str = DEFAULT_LIB_DIR
    config: str | None = None  # overrides the flavor's path
    entry: cfg.RuntimeEntry = field(default_factory=cfg.RuntimeEntry)
    config_version: int | None = None  # for a config we must create; None: ask containerd
    receipt: str = RECEIPT

    @property
    def default_version(self) -> int:
        """The version of a config without a `version` key: 1 (containerd's rule), or for a
        template its base's, which the generated file shows (k3s on containerd 2.x: 3)."""
        if not self.flavor.template:
            return 1
        if self.config_version is not None:
            return self.config_version
        generated = self.generated_config()
        if generated is not None:
            try:
                return cfg.config_version(cfg.parse(generated), default=2)
            except InvalidArgument:
                pass
        return 2

    def generated_config(self) -> str | None:
        """The text of the file a template flavor renders, when it exists."""
        if self.flavor.generated is None:
            return None
        try:
            return self.on_node(self.flavor.generated).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    @property
    def config_path(self) -> str:
        return self.config or self.flavor.config

    @property
    def shim_path(self) -> str:
        return f"{self.bin_dir.rstrip('/')}/{files.SHIM_NAME}"

    def on_node(self, path: str) -> Path:
        return files.host(self.root, path)


@dataclass(slots=True)
class Receipt:
    """What install did, in host paths: read by uninstall."""

    config: str
    handler: str
    config_created: bool = False
    backup: str | None = None
    installed_sha256: str | None = None
    files: list[str] = field(default_factory=list)  # files and symlinks we placed
    dirs: list[str] = field(default_factory=list)  # directories we placed whole
    restart_pending: bool = False  # we changed the config; containerd has not reloaded it

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> Receipt | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise InvalidArgument(f"{path}: unreadable install receipt: {e}") from None
        return cls(**data)


def install(target: Target, binary: Path | None, *, force: bool = False) -> list[str]:
    """Place the binary and register the runtime; returns one line per thing done/kept."""
    bundle = files.find_bundle(binary)
    _check_detection(target)
    path = target.on_node(target.config_path)
    distribution_registers = _registered_by_distribution(target, force=force)
    if path.exists():  # refuse a malformed or conflicting config before writing anything
        cfg.add_runtime(
            path.read_text(),
            target.entry,
            target.config_path,
            template=target.flavor.template,
            force=force,
            default_version=target.default_version,
        )
    receipt_path = target.on_node(target.receipt)
    receipt = Receipt.load(receipt_path) or Receipt(target.config_path, target.entry.handler)
    done = _place_binary(target, bundle, receipt)
    if distribution_registers is None:
        done.append(_register(target, receipt, force=force))
    else:
        done.append(distribution_registers)
    files.write_atomic(receipt_path, receipt.to_json().encode())
    return done


def _place_binary(target: Target, bundle: files.Bundle, receipt: Receipt) -> list[str]:
    done: list[str] = []
    shim_link = target.on_node(target.shim_path)
    tool_link = target.on_node(f"{target.bin_dir.rstrip('/')}/{files.TOOL_NAME}")
    if bundle.directory is not None:
        lib = target.on_node(target.lib_dir)
        if lib.is_dir() and files.tree_digest(lib) == files.tree_digest(bundle.directory):
            done.append(f"kept {target.lib_dir} (identical)")
        else:
            files.copy_tree_atomic(bundle.directory, lib)
            done.append(f"installed {target.lib_dir}")
        real = f"{target.lib_dir.rstrip('/')}/{files.SHIM_NAME}"
        _remember(receipt.dirs, target.lib_dir)
        for link in (shim_link, tool_link):
            if link.is_symlink() and os.readlink(link) == real:
                done.append(f"kept {link.name} -> {real}")
            else:
                files.symlink_atomic(real, link)
                done.append(f"linked {_host_str(target, link)} -> {real}")
            _remember(receipt.files, _host_str(target, link))
        return done
    if files.sha256_file(shim_link) == files.sha256_file(bundle.binary):
        done.append(f"kept {target.shim_path} (identical)")
    else:
        files.copy_file_atomic(bundle.binary, shim_link)
        done.append(f"installed {target.shim_path}")
    _remember(receipt.files, target.shim_path)
    if not (tool_link.is_symlink() and os.readlink(tool_link) == files.SHIM_NAME):
        files.symlink_atomic(files.SHIM_NAME, tool_link)
    _remember(receipt.files, _host_str(target, tool_link))
    return done


def _register(target: Target, receipt: Receipt, *, force: bool) -> str:
    path = target.on_node(target.config_path)
    flavor = target.flavor
    source = target.config_path
    existed = path.exists()
    if existed:
        original = path.read_text()
    elif flavor.kind is ConfigEdit.DROP_IN:
        original = cfg.minimal_config(flavor.version or 2)
    else:
        original = _initial_config(target)
    edit = cfg.add_runtime(
        original,
        target.entry,
        source,
        template=flavor.template,
        force=force,
        default_version=target.default_version,
    )
    where = f"[{cfg.section_name(edit.version, target.entry.handler)}]"
    if existed and not edit.changed:
        return f"kept {where} in {source} (already registered)"
    if existed and receipt.backup is None:
        backup = target.config_path + BACKUP_SUFFIX
        files.write_atomic(target.on_node(backup), original.encode(), like=path)
        receipt.backup = backup
    receipt.config = target.config_path
    receipt.handler = target.entry.handler
    receipt.config_created = receipt.config_created or not existed
    files.write_atomic(path, edit.text.encode(), like=path if existed else None)
    receipt.installed_sha256 = files.sha256_file(path)
    receipt.restart_pending = True
    verb = "created" if not existed else "updated"
    return f"{verb} {source}: {where} runtime_type = {target.entry.runtime_type!r}"


def restart_pending(target: Target) -> bool:
    """Did an install change the config without containerd being restarted since?"""
    receipt = Receipt.load(target.on_node(target.receipt))
    return receipt is not None and receipt.restart_pending


def restarted(target: Target) -> None:
    """Record that containerd was restarted after the last config change."""
    path = target.on_node(target.receipt)
    receipt = Receipt.load(path)
    if receipt is not None and receipt.restart_pending:
        receipt.restart_pending = False
        files.write_atomic(path, receipt.to_json().encode())


def _check_detection(target: Target) -> None:
    """Refuse a bin dir where the distribution finds wasm shims itself (flavors.py): it would
    register its own `wasmtime` runtime for our binary, beside or against ours."""
    detects = target.flavor.detects
    if os.path.normpath(target.bin_dir) in detects:
        raise InvalidArgument(
            f"--bin-dir {target.bin_dir}: {target.flavor.name} registers every "
            f"{files.SHIM_NAME} in {', '.join(detects)} by itself, with a runtime_type of its "
            f"release's choosing; install to another directory on its PATH (the default "
            f"{DEFAULT_BIN_DIR}) so that only this registration names the shim"
        )


def _registered_by_distribution(target: Target, *, force: bool) -> str | None:
    """For a template flavor: a line saying the generated config already has our handler
    from the distribution's own detection (so the template must not add a second table),
    None when we register it. A different runtime under our handler is refused."""
    generated = target.generated_config()
    if not target.flavor.template or generated is None or target.flavor.generated is None:
        return None
    try:
        doc = cfg.parse(generated, target.flavor.generated)
        theirs = cfg.registered_runtimes(doc, target.default_version).get(target.entry.handler)
    except InvalidArgument:
        return None  # not ours to judge: the template edit reports its own errors
    if theirs is None or _template_registers(target):
        return None  # not registered, or registered by the template we edit
    if theirs == target.entry.runtime_type and not force:
        return (
            f"kept {target.flavor.generated}: {target.flavor.name} registers "
            f"runtimes.{target.entry.handler} ({theirs!r}) itself; no template written"
        )
    raise AlreadyExists(
        f"{target.flavor.generated}: {target.flavor.name} already registers "
        f"runtimes.{target.entry.handler} with runtime_type {theirs!r} (its own wasm shim "
        f"detection, or another template); pass --handler with another name"
    )


def _template_registers(target: Target) -> bool:
    """Does the template itself hold runtimes.<handler> (then the generated file's is its)?"""
    try:
        text = target.on_node(target.config_path).read_text()
        doc = cfg.parse(text, target.config_path, template=True)
    except (FileNotFoundError, InvalidArgument):
        return False
    return cfg.find_runtime(doc, target.entry.handler, target.default_version) is not None


def _initial_config(target: Target) -> str:
    """A config for a node without one: a template over the distribution's "base",
    containerd's default, or the minimal file of the requested version."""
    flavor = target.flavor
    if flavor.template:
        return cfg.base_template(flavor.name)
    if target.config_version is not None:
        return cfg.minimal_config(target.config_version)
    containerd = shutil.which("containerd") if target.root == Path("/") else None
    if containerd:
        out = subprocess.run(
            [containerd, "config", "default"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout
    return cfg.minimal_config(2)


def uninstall(target: Target) -> list[str]:
    """Reverse install: the receipt's files and config edit; without one, the defaults."""
    receipt_path = target.on_node(target.receipt)
    receipt = Receipt.load(receipt_path)
    done: list[str] = []
    if receipt is None:
        receipt = Receipt(target.config_path, target.entry.handler)
        receipt.files = [target.shim_path, f"{target.bin_dir.rstrip('/')}/{files.TOOL_NAME}"]
        receipt.dirs = [target.lib_dir]
        done.append(f"no receipt at {target.receipt}: removing the default locations")
    done.append(_unregister(target, receipt))
    if target.root == Path("/"):
        installed = [Path(name) for name in (*receipt.files, *receipt.dirs)]
        done.extend(retire_warm_runtimes(installed))
    for name in receipt.files:
        p = target.on_node(name)
        if p.is_symlink() or p.exists():
            p.unlink()
            done.append(f"removed {name}")
    for name in receipt.dirs:
        p = target.on_node(name)
        if p.is_dir():
            shutil.rmtree(p)
            done.append(f"removed {name}")
    receipt_path.unlink(missing_ok=True)
    return done


def retire_warm_runtimes(installed: list[Path], control_dir: str = CONTROL_DIR) -> list[str]:
    """SIGTERM every warm runtime (one per containerd, its pid in `control_dir`) whose
    executable is one of `installed` or lies under one of them: nothing would ever retire it
    once its binary is gone. It only stops serving; running containers are not its."""
    roots = [p.resolve() for p in installed]
    done = []
    for pid_file in sorted(Path(control_dir).glob("*.pid")):
        try:
            pid = int(pid_file.read_text())
            exe = Path(os.readlink(f"/proc/{pid}/exe"))
        except (OSError, ValueError):
            continue  # gone, or not a pid
        if any(exe == r or r in exe.parents for r in roots):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                done.append(f"stopped the warm runtime {pid} ({exe})")
    return done


def _unregister(target: Target, receipt: Receipt) -> str:
    path = target.on_node(receipt.config)
    if not path.exists():
        return f"{receipt.config}: absent, nothing to unregister"
    untouched = receipt.installed_sha256 == files.sha256_file(path)
    backup = target.on_node(receipt.backup) if receipt.backup else None
    if untouched and receipt.config_created:
        path.unlink()
        return f"removed {receipt.config} (install created it)"
    if untouched and backup is not None and backup.is_file():
        files.write_atomic(path, backup.read_bytes(), like=path)
        backup.unlink()
        return f"restored {receipt.config} from {receipt.backup}"
    edit = cfg.remove_runtime(
        path.read_text(),
        receipt.handler,
        receipt.config,
        template=target.flavor.template,
        default_version=target.default_version,
    )
    if edit.changed:
        files.write_atomic(path, edit.text.encode(), like=path)
    if backup is not None:
        backup.unlink(missing_ok=True)
    what = "removed" if edit.changed else "found no"
    return f"{what} [{cfg.section_name(edit.version, receipt.handler)}] in {receipt.config}"


def _remember(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _host_str(target: Target, path: Path) -> str:
    return "/" + str(path.relative_to(target.root)).lstrip("/")
