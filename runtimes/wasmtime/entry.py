"""Finding and classifying a container's entrypoint: `process.args[0]` inside the rootfs.

This runs in the shim daemon at Create, so it uses the standard library only (no wasmtime).

Resolution follows what `execvp` would do inside the container: a name containing "/" is a
path (absolute, or relative to `process.cwd`); a bare name is looked up in the spec's `PATH`,
then in `process.cwd`. Every path is resolved *as if the rootfs were "/"*: symlinks are
followed component by component, an absolute link target restarts at the rootfs, and ".."
stops at the rootfs. So neither a symlink nor ".." can name a host file outside the rootfs;
such a path means whatever it means inside the container (usually: nothing, so NotFound).
This is the same "scoped" semantics runc uses for paths in a rootfs.

What the file *is* is decided by its first bytes, never its name: `\\0asm` + layer 0 is a core
module, layer 1 a component; text starting with `(module` / `(component` after whitespace and
comments is WAT. An ELF binary, a `#!` script or anything else is refused with
FAILED_PRECONDITION naming the file, so a user who points a wasm runtime at a Linux image
learns why at Create rather than from an opaque exit status.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque

from runtimes.base import Entrypoint, EntrypointKind, NotWasm, RunConfig
from shim.errors import FailedPrecondition, InvalidArgument, NotFound

WASM_MAGIC = b"\0asm"
ELF_MAGIC = b"\x7fELF"
SNIFF_BYTES = 64 * 1024  # enough to skip a licence header in a .wat file
MAX_SYMLINKS = 40  # as Linux's MAXSYMLINKS


def split_func(arg0: str) -> tuple[str, str | None]:
    """Split "path#func" -> (path, func); "path" -> (path, None).

    The last "#" separates, so a directory may contain one; an empty function name is an
    error rather than silently meaning the default.
    """
    path, sep, func = arg0.rpartition("#")
    if not sep:
        return arg0, None
    if not func:
        raise InvalidArgument(f"entrypoint {arg0!r} has an empty function name after '#'")
    if not path:
        raise InvalidArgument(f"entrypoint {arg0!r} names a function but no file")
    return path, func


def scoped_lookup(root: str, guest_path: str) -> tuple[str, str] | None:
    """Resolve `guest_path` (absolute) with `root` as "/": -> (host_path, guest_path) or None.

    Every symlink is followed inside `root`; ".." is clamped at `root`. Returns None if some
    component does not exist or a non-final component is not a directory. Raises
    FailedPrecondition on a symlink loop.
    """
    pending: deque[str] = deque(guest_path.split("/"))
    parts: list[str] = []
    links = 0
    while pending:
        name = pending.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        host = os.path.join(root, *parts, name)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise FailedPrecondition(f"too many levels of symbolic links in {guest_path}")
            target = os.readlink(host)
            if target.startswith("/"):
                parts = []
            pending.extendleft(reversed(target.split("/")))
            continue
        if not stat.S_ISDIR(st.st_mode) and any(p not in ("", ".") for p in pending):
            return None  # a file used as a directory: ENOTDIR
        parts.append(name)
    return os.path.join(root, *parts), "/" + "/".join(parts)


def _candidates(path: str, cwd: str, path_env: str | None) -> list[str]:
    """The guest paths to try, in order, for the entrypoint as written."""
    if path.startswith("/"):
        return [path]
    if "/" in path:
        return [posixpath.join(cwd, path)]
    dirs = path_env.split(":") if path_env else []
    # an empty PATH entry means the working directory, as in execvp
    found = [posixpath.join(cwd, d, path) for d in dirs]
    found.append(posixpath.join(cwd, path))
    return found


def sniff(head: bytes) -> EntrypointKind:
    """Classify a file by its first bytes."""
    if head.startswith(WASM_MAGIC):
        layer = int.from_bytes(head[6:8], "little") if len(head) >= 8 else 0
        return EntrypointKind.COMPONENT if layer == 1 else EntrypointKind.MODULE
    if head.startswith(ELF_MAGIC):
        return EntrypointKind.ELF
    if head.startswith(b"#!"):
        return EntrypointKind.SCRIPT
    if _looks_like_wat(head):
        return EntrypointKind.WAT
    return EntrypointKind.OTHER


def _looks_like_wat(head: bytes) -> bool:
    """True if, after whitespace, `;;` line comments and nested `(; ;)` block comments, the
    text opens with `(module` or `(component`."""
    i, n = 0, len(head)
    if head.startswith(b"\xef\xbb\xbf"):
        i = 3
    while i < n:
        if head[i] in b" \t\r\n":
            i += 1
        elif head.startswith(b";;", i):
            nl = head.find(b"\n", i)
            if nl < 0:
                return False
            i = nl + 1
        elif head.startswith(b"(;", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if head.startswith(b"(;", i):
                    depth, i = depth + 1, i + 2
                elif head.startswith(b";)", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                return False
        else:
            break
    for keyword in (b"(module", b"(component"):
        if head.startswith(keyword, i):
            rest = head[i + len(keyword) : i + len(keyword) + 1]
            return rest == b"" or rest in b" \t\r\n()$;"
    return False


def _refuse(entry: Entrypoint, head: bytes) -> NotWasm:
    guest, kind = entry.guest_path, entry.kind
    if kind is EntrypointKind.ELF:
        what = "an ELF executable"
    elif kind is EntrypointKind.SCRIPT:
        line = head[2:].split(b"\n", 1)[0].strip().decode("utf-8", "replace")
        what = f"a script (#!{line})" if line else "a script (#!)"
    elif not head:
        what = "an empty file"
    else:
        what = f"neither wasm nor WAT (it starts with {head[:8]!r})"
    return NotWasm(f"{guest} is {what}, not a wasm module", entry)


def resolve(cfg: RunConfig, path_env: str | None) -> Entrypoint:
    """Find args[0] inside the rootfs and classify it. See the module docstring.

    `path_env` is the spec environment's PATH (the caller reads it: shim.oci.spec's
    `Process.getenv`), None when it has none.
    Raises InvalidArgument, NotFound or FailedPrecondition (see `runtimes.base.Runtime`).
    """
    if not cfg.args or not cfg.args[0]:
        raise InvalidArgument("process.args is empty: there is no entrypoint to run")
    arg0 = cfg.args[0]
    path, func = split_func(arg0)
    cwd = cfg.cwd if cfg.cwd.startswith("/") else "/" + cfg.cwd
    root = os.path.realpath(cfg.rootfs)
    for guest in _candidates(path, cwd, path_env):
        hit = scoped_lookup(root, guest)
        if hit is None:
            continue
        host, guest_resolved = hit
        st = os.stat(host)
        if stat.S_ISDIR(st.st_mode):
            if "/" in path:
                raise FailedPrecondition(f"{guest} is a directory, not a wasm module")
            continue  # a PATH entry's directory of that name: keep looking, as execvp does
        if not stat.S_ISREG(st.st_mode):
            raise FailedPrecondition(f"{guest} is not a regular file")
        try:
            with open(host, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except OSError as e:
            raise FailedPrecondition(f"cannot read {guest}: {e.strerror}") from e
        found = Entrypoint(host_path=host, guest_path=guest_resolved, func=func, kind=sniff(head))
        if found.kind in (EntrypointKind.ELF, EntrypointKind.SCRIPT, EntrypointKind.OTHER):
            raise _refuse(found, head)
        return found
    if "/" in path:
        raise NotFound(f"entrypoint {path} not found in the container's rootfs")
    where = f"PATH ({path_env}) or " if path_env else ""
    raise NotFound(f"entrypoint {path!r} not found in {where}the working directory {cwd}")


def open_source(cfg: RunConfig, entry: Entrypoint) -> int:
    """A read-only descriptor of the entrypoint `resolve()` found, refusing it if it has since
    become a symlink or moved out of the rootfs (the rootfs belongs to the image, but check
    anyway: it is cheap). Raises FailedPrecondition naming the file."""
    real = os.path.realpath(entry.host_path)
    roots = [os.path.realpath(d) for d in (cfg.rootfs, cfg.artifact_dir) if d]
    if not any(os.path.commonpath([root, real]) == root for root in roots):
        raise FailedPrecondition(f"{entry.guest_path} resolves outside the container's rootfs")
    try:
        return os.open(entry.host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise FailedPrecondition(f"cannot open {entry.guest_path}: {e.strerror}") from e


def read_source(fd: int) -> bytes:
    """All of a program's bytes from `fd`, from its start, whoever read it before (`fd` is
    closed)."""
    with os.fdopen(fd, "rb") as f:
        f.seek(0)
        return f.read()
