"""A containerd binary logger (`binary://` log URI) for tests: it records what it was given.

containerd's protocol: the container's stdout arrives on fd 3, stderr on fd 4, and the logger
says it is ready by writing a byte to fd 5 and closing it. This one takes its options as
argument pairs (containerd passes the URI's query that way): `result PATH` is where it writes,
as JSON, its argv, environment, both streams and what its fds 0-2 are, once both streams end
(its pid goes to PATH.pid at once). `mode` makes it misbehave: `never-ready`, `no-byte`
(closes fd 5 without the byte), `stubborn` (ignores SIGTERM and never reads).
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = """\
#!PYTHON
import json, os, select, signal, sys, time
opts = dict(zip(sys.argv[1::2], sys.argv[2::2]))
result = opts["result"]
with open(result + ".pid", "w") as f:
    f.write(str(os.getpid()))
mode = opts.get("mode", "")
if mode == "never-ready":
    time.sleep(600)
if mode != "no-byte":
    os.write(5, b"r")
os.close(5)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
data = {3: b"", 4: b""}
live = [3, 4]
while live:
    for fd in select.select(live, [], [])[0]:
        chunk = os.read(fd, 4096)
        if chunk:
            data[fd] += chunk
        else:
            live.remove(fd)
time.sleep(0.3)  # a close() that did not wait for us would find no result yet
with open(result + ".tmp", "w") as f:
    json.dump({
        "argv": sys.argv[1:],
        "env": dict(os.environ),
        "stdout": data[3].decode(),
        "stderr": data[4].decode(),
        "fds": [os.readlink("/proc/self/fd/%d" % i) for i in range(3)],
    }, f)
os.rename(result + ".tmp", result)
"""


def write(directory: Path) -> Path:
    """The logger as an executable script in `directory`, run by this interpreter."""
    script = directory / "logger.py"
    script.write_text(SCRIPT.replace("PYTHON", sys.executable))
    script.chmod(0o755)
    return script
