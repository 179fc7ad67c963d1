"""/proc/PID/stat, read the one safe way.

Field 2, the command name, is in parentheses and may itself hold spaces and parentheses, so
the fields are split after the *last* ')'. Standard library only: `start` and `delete` read
start times through it.
"""

from __future__ import annotations


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat from field 3 (the state) on, or None when the process is
    gone (or `pid` names none). Field N is at index N - 3."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()
