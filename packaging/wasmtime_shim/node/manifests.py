"""The Kubernetes side: a RuntimeClass naming our handler, the node labels and taints that
keep wasm pods on prepared nodes, examples, and a DaemonSet that prepares nodes.

Scheduling follows the Krustlet pattern: prepared nodes carry a label (the RuntimeClass's
`scheduling.nodeSelector` adds it to every pod of the class) and optionally a taint such as
`kubernetes.io/arch=wasm32-wasi:NoSchedule` (the RuntimeClass's `scheduling.tolerations`
let the class's pods, and only them, onto such nodes). Our default label is a key of our own:
kubelet rewrites `kubernetes.io/arch` on every start, so a label there would not stay.

The DaemonSet runs `wasmtime-shim install --root /host --restart` from the installer image
(the frozen binary; it needs no Python) in a privileged init container with the host's /
mounted and hostPID (to restart containerd through nsenter), then labels its node with
kubectl, then idles in a pause container so the DaemonSet stays Ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shim.errors import InvalidArgument
from wasmtime_shim.node import yaml

DEFAULT_LABEL = ("wasmtime.containerd.io/installed", "true")
DEFAULT_INSTALLER_IMAGE = "containerd-shim-wasmtime-installer:0.1.0"
KUBECTL_IMAGE = "registry.k8s.io/kubectl:v1.31.0"
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
EXAMPLE_IMAGE = "docker.io/library/hello-wasm:latest"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
KINDS = ("runtimeclass", "pod", "deployment", "daemonset")


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    @classmethod
    def parse(cls, text: str) -> Taint:
        """`key=value:Effect` (as `kubectl taint` takes it)."""
        spec, _, effect = text.rpartition(":")
        key, _, value = spec.partition("=")
        if not key or effect not in EFFECTS:
            raise InvalidArgument(f"taint {text!r}: expected key=value:{'|'.join(EFFECTS)}")
        return cls(key, value, effect)

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise InvalidArgument(f"label {text!r}: expected key=value")
    return key, value


@dataclass(frozen=True, slots=True)
class Options:
    handler: str = "wasmtime"
    name: str = "wasmtime"  # the RuntimeClass's name (pods say runtimeClassName: NAME)
    labels: tuple[tuple[str, str], ...] = (DEFAULT_LABEL,)
    taints: tuple[Taint, ...] = ()
    image: str = EXAMPLE_IMAGE  # the example workload
    installer_image: str = DEFAULT_INSTALLER_IMAGE
    namespace: str = "kube-system"
    flavor: str = "containerd"
    install_args: tuple[str, ...] = field(default=())


def runtime_class(o: Options) -> dict[str, Any]:
    scheduling: dict[str, Any] = {"nodeSelector": dict(o.labels)}
    if o.taints:
        scheduling["tolerations"] = _tolerations(o.taints)
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": o.name},
        "handler": o.handler,
        "scheduling": scheduling,
    }


def node_commands(o: Options, node: str = "NODE") -> list[str]:
    """The kubectl commands that prepare a node by hand (what the DaemonSet does)."""
    labels = " ".join(f"{k}={v}" for k, v in o.labels)
    out = [f"kubectl label node {node} {labels} --overwrite"]
    out += [f"kubectl taint node {node} {t} --overwrite" for t in o.taints]
    return out


def _pod_spec(o: Options) -> dict[str, Any]:
    return {
        "runtimeClassName": o.name,
        "restartPolicy": "Never",
        "containers": [{"name": "wasm", "image": o.image}],
    }


def pod(o: Options) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "wasm-example", "labels": {"app": "wasm-example"}},
        "spec": _pod_spec(o),
    }


def deployment(o: Options) -> dict[str, Any]:
    spec = {**_pod_spec(o), "restartPolicy": "Always"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "wasm-example"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "wasm-example"}},
            "template": {"metadata": {"labels": {"app": "wasm-example"}}, "spec": spec},
        },
    }


def daemonset(o: Options) -> list[dict[str, Any]]:
    """The installer DaemonSet with its ServiceAccount and the RBAC to label nodes."""
    name = "wasmtime-shim-installer"
    meta = {"name": name, "namespace": o.namespace}
    install = [
        "wasmtime-shim",
        "install",
        "--root",
        "/host",
        "--flavor",
        o.flavor,
        "--handler",
        o.handler,
        "--restart",
        *o.install_args,
    ]
    label = ["kubectl", "label", "node", "$(NODE_NAME)", *(f"{k}={v}" for k, v in o.labels)]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "hostPID": True,
        "initContainers": [
            {
                "name": "install",
                "image": o.installer_image,
                "command": install,
                "securityContext": {"privileged": True},
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
            },
            {
                "name": "label-node",
                "image": KUBECTL_IMAGE,
                "command": [*label, "--overwrite"],
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                ],
            },
        ],
        "containers": [{"name": "idle", "image": PAUSE_IMAGE}],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    }
    if o.taints:
        pod_spec["tolerations"] = _tolerations(o.taints)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": o.namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {**meta, "labels": {"app": name}},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            },
        },
    ]


def documents(o: Options, kinds: tuple[str, ...] = KINDS) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "runtimeclass":
            docs.append(runtime_class(o))
        elif kind == "pod":
            docs.append(pod(o))
        elif kind == "deployment":
            docs.append(deployment(o))
        elif kind == "daemonset":
            docs += daemonset(o)
        else:
            raise InvalidArgument(f"unknown manifest {kind!r}; choose from {', '.join(KINDS)}")
    return docs


def render(o: Options, kinds: tuple[str, ...] = KINDS) -> str:
    """Multi-document YAML, headed by the node commands as comments."""
    head = "# Prepare a node by hand (the DaemonSet below does the same):\n"
    head += "".join(f"#   {line}\n" for line in node_commands(o))
    return head + yaml.dump_all(documents(o, kinds))


def _tolerations(taints: tuple[Taint, ...]) -> list[dict[str, str]]:
    return [
        {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect} for t in taints
    ]
