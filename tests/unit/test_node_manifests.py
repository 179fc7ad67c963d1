"""Generated Kubernetes manifests parse as YAML and carry the scheduling fields."""

from __future__ import annotations

import pytest
import yaml as pyyaml
from hypothesis import given
from hypothesis import strategies as st

from shim.errors import InvalidArgument
from wasmtime_shim.node import manifests as m
from wasmtime_shim.node import yaml
from wasmtime_shim.node.commands import register

TAINT = m.Taint.parse("kubernetes.io/arch=wasm32-wasi:NoSchedule")
OPTIONS = m.Options(handler="wt", name="wasm", labels=(("a.io/b", "yes"),), taints=(TAINT,))


def by_kind(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in pyyaml.safe_load_all(text)}


def test_runtime_class() -> None:
    rc = by_kind(m.render(OPTIONS))["RuntimeClass"]
    assert rc["apiVersion"] == "node.k8s.io/v1"
    assert rc["metadata"]["name"] == "wasm"
    assert rc["handler"] == "wt"
    assert rc["scheduling"]["nodeSelector"] == {"a.io/b": "yes"}  # a string, not a bool
    assert rc["scheduling"]["tolerations"] == [
        {
            "key": "kubernetes.io/arch",
            "operator": "Equal",
            "value": "wasm32-wasi",
            "effect": "NoSchedule",
        }
    ]


def test_no_taint_no_tolerations() -> None:
    rc = by_kind(m.render(m.Options()))["RuntimeClass"]
    assert "tolerations" not in rc["scheduling"]
    assert rc["scheduling"]["nodeSelector"] == {"wasmtime.containerd.io/installed": "true"}


def test_daemonset_installs_and_labels_the_node() -> None:
    docs = by_kind(m.render(OPTIONS))
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["volumes"] == [{"name": "host", "hostPath": {"path": "/"}}]
    install, label = spec["initContainers"]
    assert install["securityContext"] == {"privileged": True}
    assert install["volumeMounts"] == [{"name": "host", "mountPath": "/host"}]
    assert install["image"] == m.DEFAULT_INSTALLER_IMAGE
    assert install["imagePullPolicy"] == "IfNotPresent"  # an image imported on the node works
    cmd = install["args"]  # the image's entrypoint is the bundle's wasmtime-shim
    assert cmd[0] == "install"
    assert cmd[cmd.index("--root") + 1] == "/host" and "--restart" in cmd
    assert cmd[cmd.index("--handler") + 1] == "wt"
    assert label["command"][:4] == ["kubectl", "label", "node", "$(NODE_NAME)"]
    assert "a.io/b=yes" in label["command"]
    assert spec["tolerations"][0]["key"] == "kubernetes.io/arch"
    role = docs["ClusterRole"]["rules"][0]
    assert role["resources"] == ["nodes"] and "patch" in role["verbs"]
    assert docs["ClusterRoleBinding"]["subjects"][0]["name"] == spec["serviceAccountName"]


def test_examples_use_the_runtime_class() -> None:
    docs = by_kind(m.render(OPTIONS))
    assert docs["Pod"]["spec"]["runtimeClassName"] == "wasm"
    tmpl = docs["Deployment"]["spec"]["template"]
    assert tmpl["spec"]["runtimeClassName"] == "wasm"
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"] == tmpl["metadata"]["labels"]
    # the images `make example-images` builds: one that exits for the Pod, one that runs
    # until stopped for the Deployment (which restarts whatever exits)
    assert docs["Pod"]["spec"]["containers"][0]["image"] == m.EXAMPLE_IMAGE
    assert docs["Pod"]["spec"]["restartPolicy"] == "Never"
    assert tmpl["spec"]["containers"][0]["image"] == m.DEPLOYMENT_IMAGE
    assert tmpl["spec"]["restartPolicy"] == "Always"


def test_uninstall_daemonset_restores_then_unlabels() -> None:
    docs = list(pyyaml.safe_load_all(m.render(OPTIONS, ("uninstall",))))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert ds["metadata"]["name"] == "wasmtime-shim-uninstaller"
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"a.io/b": "yes"}  # only prepared nodes
    uninstall, label = spec["initContainers"]
    assert uninstall["args"][:3] == ["uninstall", "--root", "/host"]
    assert "--restart" in uninstall["args"]
    assert label["command"] == ["kubectl", "label", "node", "$(NODE_NAME)", "a.io/b-"]
    assert "uninstall" not in m.DEFAULT_KINDS  # never applied together with the installer
    assert not any(d["metadata"]["name"] == ds["metadata"]["name"] for d in m.documents(OPTIONS))


@pytest.mark.parametrize(
    "ref",
    [
        "localhost/containerd-shim-wasmtime/installer:0.1.0",
        "registry.example:5000/team/installer@sha256:" + "a" * 64,
        "ghcr.io/org/installer:1.2.3@sha256:" + "0" * 64,
    ],
)
def test_image_references(ref: str) -> None:
    assert m.check_image(ref) == ref


@pytest.mark.parametrize("ref", ["", "Upper/case:1", "x@sha256:short", "a b:1"])
def test_bad_image_references(ref: str) -> None:
    with pytest.raises(InvalidArgument, match="expected NAME"):
        m.check_image(ref)


def test_node_commands() -> None:
    assert m.node_commands(OPTIONS, "n1") == [
        "kubectl label node n1 a.io/b=yes --overwrite",
        "kubectl taint node n1 kubernetes.io/arch=wasm32-wasi:NoSchedule --overwrite",
    ]
    assert "#   kubectl taint node NODE" in m.render(OPTIONS)


@pytest.mark.parametrize("bad", ["k=v", "k=v:Sometimes", "=v:NoSchedule"])
def test_bad_taint(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        m.Taint.parse(bad)


@given(st.text())
def test_any_string_reads_back_as_itself(text: str) -> None:
    doc = {"k": text, "l": [text, {"n": text}]}
    assert pyyaml.safe_load(yaml.dump(doc)) == doc


@given(st.one_of(st.integers(), st.booleans(), st.none()))
def test_scalars_keep_their_type(value: object) -> None:
    assert pyyaml.safe_load(yaml.dump({"v": value})) == {"v": value}


def test_cli_parses_labels_and_taints(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(
        [
            "manifests",
            "--handler",
            "h",
            "--node-label",
            "x/y=1",
            "--taint",
            "t=w:NoExecute",
            "--only",
            "runtimeclass",
        ]
    )
    assert args.func(args) == 0
    (rc,) = list(pyyaml.safe_load_all(capsys.readouterr().out))
    assert rc["handler"] == "h" and rc["scheduling"]["nodeSelector"] == {"x/y": "1"}
    assert rc["scheduling"]["tolerations"][0]["effect"] == "NoExecute"
