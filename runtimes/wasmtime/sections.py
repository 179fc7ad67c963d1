"""The initial linear memory a core module declares, read from its binary's section headers.

wasmtime-py lists only the memories a module exports or imports; a module may also define
one it keeps to itself. The container process needs the total before it instantiates the
module, to refuse a memory limit the module cannot fit in (shim/proc/child.py), so this
reads the import and memory sections of the file itself. They come before the code and data
sections, so only the first few kilobytes of even a large module are read. A file this
cannot follow gives 0 ("unknown"), never an error: the engine's own parse is the authority.
"""

from __future__ import annotations

import os

WASM_PAGE = 64 << 10
_MODULE_HEADER = b"\0asm\x01\0\0\0"
_IMPORT, _MEMORY = 2, 5
_MAX_SECTION = 16 << 20  # an import or memory section larger than this is not followed


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Malformed
        self.pos += 1
        return self.data[self.pos - 1]

    def leb(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise _Malformed

    def skip_name(self) -> None:
        length = self.leb()  # first: `self.pos += self.leb()` would add to the old pos
        self.pos += length

    def limits_min(self) -> int:
        flags = self.byte()
        minimum = self.leb()
        if flags & 1:
            self.leb()
        return minimum


def _import_memories(r: _Reader) -> int:
    total = 0
    for _ in range(r.leb()):
        r.skip_name()
        r.skip_name()
        kind = r.byte()
        if kind == 0:  # function: type index
            r.leb()
        elif kind == 1:  # table: reference type, limits
            r.byte()
            r.limits_min()
        elif kind == 2:  # memory
            total += r.limits_min()
        elif kind == 3:  # global: value type, mutability
            r.byte()
            r.byte()
        elif kind == 4:  # tag: attribute, type index
            r.byte()
            r.leb()
        else:
            raise _Malformed
    return total


def declared_memory(fd: int) -> int:
    """Bytes of initial linear memory the module at `fd` defines and imports (0: unknown)."""
    try:
        if os.pread(fd, 8, 0) != _MODULE_HEADER:
            return 0
        pages, offset = 0, 8
        while True:
            head = _Reader(os.pread(fd, 11, offset))
            section = head.byte()
            size = head.leb()
            body_at = offset + head.pos
            if section in (_IMPORT, _MEMORY):
                if size > _MAX_SECTION:
                    return 0
                body = _Reader(os.pread(fd, size, body_at))
                if section == _IMPORT:
                    pages += _import_memories(body)
                else:
                    pages += sum(body.limits_min() for _ in range(body.leb()))
                    return pages * WASM_PAGE
            elif section not in (0, 1, 3, 4):  # past where a memory section could be
                return pages * WASM_PAGE
            offset = body_at + size
    except (_Malformed, OSError):
        return 0
