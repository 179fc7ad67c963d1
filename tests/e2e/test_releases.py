"""What differs between containerd releases, checked on the release the run selected.

The matrix (tests/versions.py) runs the core subset on containerd 1.6, 1.7 and 2.x; this
module holds what is release-specific: that the selected containerd really is the one
running, and containerd 2.x's ``<shim> -info`` (runtime introspection, which its CRI plugin
calls for every runtime handler at start-up and ``ctr plugins inspect-runtime`` shows).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from google.protobuf import any_pb2

from shim.api.containerd.types import introspection_pb2
from tests import versions
from tests.containerd import RUNTIME, PrivateContainerd


def test_the_selected_containerd_is_the_one_answering(
    containerd: PrivateContainerd, containerd_release: versions.Binaries
) -> None:
    out = containerd.ctr("version").stdout
    server = out.split("Server:", 1)[1]
    assert f"Version:  {containerd_release.version.removeprefix('v')}" in server, out
    client = out.split("Server:", 1)[0]
    assert f"Version:  {containerd_release.version.removeprefix('v')}" in client, out


@pytest.mark.since_containerd(2)
def test_ctr_inspect_runtime_shows_the_shims_features(bed: PrivateContainerd) -> None:
    """containerd 2.x runs ``<shim> -info`` and passes its RuntimeInfo on: our name and
    version, and a features document that claims no user namespaces, idmapped mounts or
    hooks (which a wasm container does not get), so kubelet sends no user-namespaced pod."""
    done = bed.ctr("plugins", "inspect-runtime", "--runtime", RUNTIME)
    info = json.loads(done.stdout)
    assert info["Name"] == RUNTIME, info
    assert info["Version"]["Version"], info
    # ctr decodes the features itself, which it does only for the type URL runtime-spec
    # features are registered under: a wrong one would leave an opaque Any here.
    features = info["Features"]
    assert features["ociVersionMin"] == "1.0.0", features
    linux = features["linux"]
    assert "user" not in linux["namespaces"] and "pid" in linux["namespaces"], linux
    assert linux["mountExtensions"]["idmap"]["enabled"] is False
    assert not features.get("hooks")  # empty, which Go leaves out
    assert "rbind" in features["mountOptions"] and "ro" in features["mountOptions"]
    assert "SCMP_ACT_ERRNO" in linux["seccomp"]["actions"]
    assert "SCMP_ACT_NOTIFY" not in linux["seccomp"]["actions"]


def test_info_echoes_the_options_containerd_sends(bed: PrivateContainerd) -> None:
    """``-info`` reads the runtime's options (an ``Any``) from stdin and echoes them back,
    as containerd's own shims do; the shipped binary answers like the venv's script."""
    options = any_pb2.Any(type_url="runtimeoptions.v1.Options", value=b"\x0a\x03abc")
    done = subprocess.run(
        [str(bed.shim), "-info"],
        input=options.SerializeToString(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    info = introspection_pb2.RuntimeInfo()
    info.ParseFromString(done.stdout)
    assert info.name == RUNTIME
    assert info.options == options
    assert json.loads(info.features.value)["linux"]["cgroup"] == {
        "v1": True,
        "v2": True,
        "systemd": False,
        "systemdUser": False,
    }

    garbage = subprocess.run(
        [str(bed.shim), "-info"], input=b"\xff\xff", capture_output=True, timeout=30, check=False
    )
    assert garbage.returncode == 1 and b"-info" in garbage.stderr, garbage
