"""config-examples/: every file parses; the 1.x one is loaded by Debian's containerd 1.6 and the
2.x one by containerd 2.4 (tests/versions.py);
the YAML ones are exactly what `wasmtime-shim manifests` generates (so they cannot drift)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomlkit
import yaml as pyyaml

from tests import versions
from tests.containerd import CONTAINERD
from tests.prereq import require
from wasmtime_shim.node import config as cfg
from wasmtime_shim.node import manifests as m

EXAMPLES = Path(__file__).resolve().parents[2] / "config-examples"
# What the YAML examples were generated with (see the README's "Installing on a node").
OPTIONS = m.Options(taints=(m.Taint.parse("kubernetes.io/arch=wasm32-wasi:NoSchedule"),))


@pytest.mark.parametrize(
    ("name", "version"),
    [("containerd-1.x-config.toml", 2), ("containerd-2.x-config.toml", 3)],
)
def test_containerd_configs_register_the_runtime(name: str, version: int) -> None:
    doc = tomlkit.parse((EXAMPLES / name).read_text())
    assert cfg.config_version(doc) == version
    assert cfg.registered_runtimes(doc)["wasmtime"] == "io.containerd.wasmtime.v1"
    assert cfg.registered_runtimes(doc)["runc"] == "io.containerd.runc.v2"
    # install on top of the example is a no-op (the stanza is exactly ours)
    entry = cfg.RuntimeEntry(
        pod_annotations=cfg.WASM_POD_ANNOTATIONS,
        runtime_path="/usr/local/bin/containerd-shim-wasmtime-v1" if version == 2 else None,
    )
    assert not cfg.add_runtime((EXAMPLES / name).read_text(), entry).changed


def test_containerd_1x_loads_the_v2_example() -> None:
    """Debian's containerd 1.6 loads it and shows our runtime in the merged config."""
    require(CONTAINERD.exists(), f"{CONTAINERD} is missing (Debian package containerd)")
    path = EXAMPLES / "containerd-1.x-config.toml"
    out = subprocess.run(
        [str(CONTAINERD), "--config", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    runtimes = tomlkit.parse(out.stdout)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert runtimes["runtimes"]["wasmtime"]["runtime_type"] == "io.containerd.wasmtime.v1"


def test_containerd_2x_loads_the_v3_example() -> None:
    """containerd 2.4 (built by tests/versions.py) loads the 2.x example: our runtime in the
    CRI runtime plugin, and the wasm platforms in the transfer service's unpack list."""
    problem = versions.problem(versions.Release.V2)
    require(problem is None, problem or "")
    binaries = versions.ensure(versions.Release.V2)
    path = EXAMPLES / "containerd-2.x-config.toml"
    out = subprocess.run(
        [str(binaries.containerd), "--config", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    plugins = tomlkit.parse(out.stdout)["plugins"]
    runtimes = plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    assert runtimes["wasmtime"]["runtime_type"] == "io.containerd.wasmtime.v1"
    unpack = plugins["io.containerd.transfer.v1.local"]["unpack_config"]
    wasm = {u["platform"]: u.get("differ") for u in unpack if "wasm" in u["platform"]}
    assert wasm == {"wasip1/wasm": "walking", "wasip2/wasm": "walking"}, unpack


def test_containerd_1x_refuses_a_malformed_file(tmp_path: Path) -> None:
    """The check above can fail: containerd does reject a broken file."""
    require(CONTAINERD.exists(), f"{CONTAINERD} is missing (Debian package containerd)")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 2\n[plugins\n")
    out = subprocess.run(
        [str(CONTAINERD), "--config", str(bad), "config", "dump"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0


def test_k3s_template() -> None:
    text = (EXAMPLES / "k3s-config.toml.tmpl").read_text()
    doc = cfg.parse(text, template=True)
    # no `version` key: the template inherits version 2 from k3s's "base"
    assert cfg.registered_runtimes(doc, 2) == {"wasmtime": "io.containerd.wasmtime.v1"}
    entry = cfg.RuntimeEntry()
    assert not cfg.add_runtime(text, entry, template=True, default_version=2).changed


@pytest.mark.parametrize("kind", m.KINDS)
def test_yaml_examples_are_generated(kind: str) -> None:
    text = (EXAMPLES / f"{kind}.yaml").read_text()
    assert text == m.render(OPTIONS, (kind,)), (
        f"regenerate: wasmtime-shim manifests --only {kind} "
        f"--taint kubernetes.io/arch=wasm32-wasi:NoSchedule -o config-examples/{kind}.yaml"
    )
    docs = list(pyyaml.safe_load_all(text))
    assert docs == m.documents(OPTIONS, (kind,))
    assert all(d["apiVersion"] and d["kind"] and d["metadata"]["name"] for d in docs)
