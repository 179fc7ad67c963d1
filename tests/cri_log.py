"""The CRI log file format: what containerd writes for each container and kubectl logs reads.

Each entry is ``<RFC 3339 time> <stdout|stderr> <P|F> <content>``: ``F`` ends a line, ``P`` is
a piece of a longer line that the runtime split (the next entries of that stream continue it).
Parsing is strict so that a runtime writing raw output instead fails the test that reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LogLine:
    """One entry of a CRI log file: ``<time> <stream> <P|F> <content>``.

    ``partial`` is True for a ``P`` entry (the runtime split a long line; the next entries
    continue it); ``content`` excludes the newline.
    """

    time: str
    stream: str
    partial: bool
    content: str


def parse_cri_log(text: str) -> list[LogLine]:
    """Parse the CRI log format that containerd writes and ``kubectl logs`` reads.

    Raises ValueError naming the line when a line is not in that format, so a test fails on a
    runtime that writes raw output instead.
    """
    entries: list[LogLine] = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[1] not in ("stdout", "stderr") or parts[2] not in ("P", "F"):
            raise ValueError(f"line {number} is not in the CRI log format: {line!r}")
        content = parts[3] if len(parts) == 4 else ""
        entries.append(LogLine(parts[0], parts[1], parts[2] == "P", content))
    return entries


def join_lines(entries: Iterable[LogLine], stream: str | None = None) -> list[str]:
    """The logical lines of ``entries`` (partials joined), optionally of one stream only."""
    lines: list[str] = []
    pending: dict[str, str] = {}
    for entry in entries:
        if stream is not None and entry.stream != stream:
            continue
        text = pending.pop(entry.stream, "") + entry.content
        if entry.partial:
            pending[entry.stream] = text
        else:
            lines.append(text)
    lines += [text for text in pending.values() if text]
    return lines
