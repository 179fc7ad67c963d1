"""The spec's `linux.seccomp` profile, compiled by libseccomp and installed in the guest process.

libseccomp is the library runc and crun use; it is loaded through ctypes (`libseccomp.so.2`,
installed wherever runc is), so the filter the kernel gets is the one libseccomp builds from
the profile, not BPF written here. The profile is compiled twice: at Create, in the daemon,
only to find what is wrong with it (`check`), so that a bad profile fails Create with a
message; and in the container process, where it is loaded (`install`).

How the OCI profile maps to libseccomp, as runc maps it:
- `defaultAction` (with `defaultErrnoRet`) is the filter's default; `architectures` are added
  beside the native one; `flags` map to filter attributes (TSYNC, LOG, SPEC_ALLOW).
- Each `syscalls` entry adds one rule per name with its `action` (and `errnoRet`). A name
  libseccomp does not know on this kernel's architectures is skipped (profiles list
  syscalls of every architecture), and so is a rule whose action is the default action.
- `args`: when every condition names a different argument they form one rule (all must
  hold); when an argument is named twice, each condition is a rule of its own (any may
  hold), since libseccomp cannot AND two conditions on the same argument.
- libseccomp would set no_new_privs on load by default; it is told not to, because whether
  the process has it is `process.noNewPrivileges`'s to say (shim/confine/privileges.py).
- `listenerPath` (SCMP_ACT_NOTIFY to an agent) is refused: no agent protocol here.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from typing import Any

from shim.errors import FailedPrecondition, InvalidArgument

_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_LOG": 0x7FFC0000,
}
_ERRNO_ACTION = 0x00050000  # | errno
_TRACE_ACTION = 0x7FF00000  # | message
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_ATTR_CTL_NNP = 3
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
}
_NR_SCMP_ERROR = -1


def action_names() -> frozenset[str]:
    """The ``SCMP_ACT_*`` actions a profile may use here (SCMP_ACT_NOTIFY is refused)."""
    return frozenset(_ACTIONS) | {"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"}


def operator_names() -> frozenset[str]:
    """The ``SCMP_CMP_*`` argument operators a profile may use here."""
    return frozenset(_OPS)


def flag_names() -> frozenset[str]:
    """The ``SECCOMP_FILTER_FLAG_*`` flags a profile may set here."""
    return frozenset(_FLAGS)


_MAX_ARGS = 6


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Lib:
    """The libseccomp functions used here, with their C signatures."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as e:
            raise FailedPrecondition(
                f"the spec has a seccomp profile, but libseccomp cannot be loaded ({e}); "
                "install libseccomp2 (it comes with runc)"
            ) from None
        self.init = lib.seccomp_init
        self.init.argtypes = [ctypes.c_uint32]
        self.init.restype = ctypes.c_void_p
        self.release = lib.seccomp_release
        self.release.argtypes = [ctypes.c_void_p]
        self.release.restype = None
        self.load = lib.seccomp_load
        self.load.argtypes = [ctypes.c_void_p]
        self.load.restype = ctypes.c_int
        self.attr_set = lib.seccomp_attr_set
        self.attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        self.attr_set.restype = ctypes.c_int
        self.arch_resolve = lib.seccomp_arch_resolve_name
        self.arch_resolve.argtypes = [ctypes.c_char_p]
        self.arch_resolve.restype = ctypes.c_uint32
        self.arch_add = lib.seccomp_arch_add
        self.arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.arch_add.restype = ctypes.c_int
        self.resolve = lib.seccomp_syscall_resolve_name
        self.resolve.argtypes = [ctypes.c_char_p]
        self.resolve.restype = ctypes.c_int
        self.rule_add = lib.seccomp_rule_add_array
        self.rule_add.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        self.rule_add.restype = ctypes.c_int


_lib: _Lib | None = None


def _library() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def _action(name: Any, errno_ret: Any, default_errno: int) -> int:
    if name == "SCMP_ACT_ERRNO":
        value = default_errno if errno_ret is None else errno_ret
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise InvalidArgument(f"seccomp: errnoRet {value!r} is not an errno")
        return _ERRNO_ACTION | value
    if name == "SCMP_ACT_TRACE":
        value = 1 if errno_ret is None else errno_ret  # EPERM to a process without a tracer
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise InvalidArgument(f"seccomp: errnoRet {value!r} is not a trace message")
        return _TRACE_ACTION | value
    if name == "SCMP_ACT_NOTIFY":
        raise InvalidArgument("seccomp: SCMP_ACT_NOTIFY needs a listener, which is not supported")
    if not isinstance(name, str) or name not in _ACTIONS:
        raise InvalidArgument(f"seccomp: unknown action {name!r}")
    return _ACTIONS[name]


def _conditions(args: Any, where: str) -> list[list[_ArgCmp]]:
    """The rules (each a list of ANDed conditions) one syscall entry's `args` make."""
    if not args:
        return [[]]
    if not isinstance(args, list):
        raise InvalidArgument(f"seccomp: {where}.args must be a list")
    conds: list[_ArgCmp] = []
    for i, a in enumerate(args):
        if not isinstance(a, Mapping):
            raise InvalidArgument(f"seccomp: {where}.args[{i}] must be an object")
        index, op = a.get("index"), a.get("op")
        if not isinstance(index, int) or not 0 <= index < _MAX_ARGS:
            raise InvalidArgument(f"seccomp: {where}.args[{i}].index {index!r} is not 0-5")
        if op not in _OPS:
            raise InvalidArgument(f"seccomp: {where}.args[{i}].op {op!r} is unknown")
        value, value_two = a.get("value", 0), a.get("valueTwo", 0)
        if not all(isinstance(v, int) and 0 <= v < 2**64 for v in (value, value_two)):
            raise InvalidArgument(f"seccomp: {where}.args[{i}] values must be 64-bit integers")
        conds.append(_ArgCmp(index, _OPS[op], value, value_two))
    if len({c.arg for c in conds}) == len(conds):
        return [conds]
    return [[c] for c in conds]


class Filter:
    """A compiled profile: a libseccomp context, to be loaded once or released."""

    def __init__(self, profile: Mapping[str, Any]) -> None:
        self._lib = _library()
        self._ctx: int | None = None
        if profile.get("listenerPath"):
            raise InvalidArgument("seccomp: listenerPath (a notify agent) is not supported")
        default_errno = profile.get("defaultErrnoRet", 1)
        if not isinstance(default_errno, int):
            raise InvalidArgument("seccomp: defaultErrnoRet must be an integer")
        default = _action(profile.get("defaultAction"), None, default_errno)
        ctx = self._lib.init(default)
        if not ctx:
            raise InvalidArgument(f"seccomp: libseccomp refused the default action {default:#x}")
        self._ctx = ctx
        try:
            self._build(profile, default, default_errno)
        except BaseException:
            self.release()
            raise

    def _call(self, rc: int, what: str) -> None:
        if rc < 0:
            raise InvalidArgument(f"seccomp: {what}: {os.strerror(-rc)}")

    def _build(self, profile: Mapping[str, Any], default: int, default_errno: int) -> None:
        lib = self._lib
        self._call(lib.attr_set(self._ctx, _ATTR_CTL_NNP, 0), "no_new_privs attribute")
        for flag in profile.get("flags") or ():
            if flag not in _FLAGS:
                raise InvalidArgument(f"seccomp: flag {flag!r} is not supported")
            self._call(lib.attr_set(self._ctx, _FLAGS[flag], 1), f"flag {flag}")
        for arch in profile.get("architectures") or ():
            name = str(arch).removeprefix("SCMP_ARCH_").lower().encode()
            token = lib.arch_resolve(name)
            if not token:
                raise InvalidArgument(f"seccomp: unknown architecture {arch!r}")
            rc = lib.arch_add(self._ctx, token)
            if rc < 0 and -rc != 17:  # EEXIST: the native one is always there
                self._call(rc, f"architecture {arch}")
        for n, entry in enumerate(profile.get("syscalls") or ()):
            where = f"syscalls[{n}]"
            if not isinstance(entry, Mapping):
                raise InvalidArgument(f"seccomp: {where} must be an object")
            action = _action(entry.get("action"), entry.get("errnoRet"), default_errno)
            if action == default:
                continue
            rules = _conditions(entry.get("args"), where)
            names = entry.get("names") or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InvalidArgument(f"seccomp: {where}.names must be a list of strings")
            for name in names:
                nr = lib.resolve(str(name).encode())
                if nr == _NR_SCMP_ERROR:
                    continue
                for conds in rules:
                    array = (_ArgCmp * max(1, len(conds)))(*conds)
                    self._call(
                        lib.rule_add(self._ctx, action, nr, len(conds), array),
                        f"{where} {name}",
                    )

    def load(self) -> None:
        """Install the filter in this process (irrevocable), then release the context."""
        assert self._ctx is not None
        rc = self._lib.load(self._ctx)
        self.release()
        if rc < 0:
            raise FailedPrecondition(f"seccomp: loading the filter failed: {os.strerror(-rc)}")

    def release(self) -> None:
        if self._ctx is not None:
            self._lib.release(self._ctx)
            self._ctx = None


def check(profile: Mapping[str, Any]) -> None:
    """Compile `profile` and throw it away: InvalidArgument says what is wrong with it."""
    Filter(profile).release()
