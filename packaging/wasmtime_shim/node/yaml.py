"""A small YAML writer for the manifests we generate (dicts, lists, strings, ints, bools).

The tool runs on nodes from the frozen binary, so it avoids a YAML dependency: block style for
mappings and sequences, and any string that a YAML reader could take for something else
(a number, a bool, `null`, one with `: ` or `#`) is double-quoted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return quote(text)


def quote(text: str) -> str:
    """A YAML double-quoted scalar: printable characters as they are, the rest escaped.

    (json.dumps is close but writes astral characters as surrogate pairs, which YAML
    reads as two lone surrogates.)"""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif (
            0x20 <= code <= 0x7E
            or 0xA0 <= code <= 0xD7FF
            or 0xE000 <= code <= 0xFFFD
            or code >= 0x10000
        ):
            out.append(ch)
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def dump(value: Any, indent: int = 0) -> str:
    """One YAML document (no `---`), ending in a newline."""
    return "".join(_lines(value, indent))


def dump_all(documents: Sequence[Any]) -> str:
    return "".join(f"---\n{dump(doc)}" for doc in documents)


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [f"{pad}{{}}\n"]
        out = []
        for key, item in value.items():
            if _is_block(item):
                out.append(f"{pad}{scalar(key)}:\n")
                child = indent if isinstance(item, list) else indent + 2
                out += _lines(item, child)
            else:
                out.append(f"{pad}{scalar(key)}: {_inline(item)}\n")
        return out
    if isinstance(value, list):
        if not value:
            return [f"{pad}[]\n"]
        out = []
        for item in value:
            if _is_block(item):
                body = _lines(item, indent + 2)
                out.append(f"{pad}- {body[0][indent + 2 :]}")
                out += body[1:]
            else:
                out.append(f"{pad}- {_inline(item)}\n")
        return out
    return [f"{pad}{scalar(value)}\n"]


def _is_block(value: Any) -> bool:
    return isinstance(value, (Mapping, list)) and bool(value)


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return scalar(value)
