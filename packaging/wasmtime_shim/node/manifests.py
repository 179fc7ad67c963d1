"""The Kubernetes side: a RuntimeClass naming our handler, the node labels and taints that
keep wasm pods on prepared nodes, examples, and a DaemonSet that prepares nodes.

Scheduling follows the Krustlet pattern: prepared nodes carry a label (the RuntimeClass's
`scheduling.nodeSelector` adds it to every pod of the class) and optionally a taint such as
`kubernetes.io/arch=wasm32-wasi:NoSchedule` (the RuntimeClass's `scheduling.tolerations`
let the class's pods, and only them, onto such nodes). Our default label is a key of our own:
kubelet rewrites `kubernetes.io/arch` on every start, so a label there would not stay.

The DaemonSet runs `wasmtime-shim install --root /host --restart` from the installer image
(the frozen bundle with the libraries it loads, built by packaging/installer_image.py; it
needs no Python) in a privileged init container with the host's / mounted and hostPID (to
restart containerd through nsenter: only when the config changed), then labels its node with
kubectl, then idles in a pause container so the DaemonSet stays Ready. Deleting a DaemonSet
runs nothing on the nodes, so taking the shim off is a second DaemonSet (`uninstall`): on
every labelled node it runs `wasmtime-shim uninstall --root /host --restart`, which restores
the config and removes the files, then removes the label, which ends its own pod there.

The examples' images are the ones `make example-images` builds (config-examples/wasm/): a
Pod that prints and exits, and a Deployment of a program that runs until stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shim import __version__
from shim.errors import InvalidArgument
from wasmtime_shim.node import yaml

DEFAULT_LABEL = ("wasmtime.containerd.io/installed", "true")
# The names `make installer-image` and `make example-images` give the images they write
# (under dist/images/); import them on the nodes, or push them and pass their new names
# (NAME@sha256:DIGEST pins one: the build prints the digest).
INSTALLER_REPOSITORY = "localhost/containerd-shim-wasmtime/installer"
DEFAULT_INSTALLER_IMAGE = f"{INSTALLER_REPOSITORY}:{__version__}"
EXAMPLE_IMAGE = f"localhost/containerd-shim-wasmtime/hello:{__version__}"
DEPLOYMENT_IMAGE = f"localhost/containerd-shim-wasmtime/heartbeat:{__version__}"
KUBECTL_IMAGE = "registry.k8s.io/kubectl:v1.31.0"
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
KINDS = ("runtimeclass", "pod", "deployment", "daemonset", "uninstall")
# What `manifests` prints without --only: the uninstall DaemonSet is applied on its own,
# after the installer DaemonSet is deleted.
DEFAULT_KINDS = ("runtimeclass", "pod", "deployment", "daemonset")
_IMAGE_REF = re.compile(r"[a-z0-9][a-z0-9._/:-]*[a-z0-9](:[\w][\w.-]*)?(@sha256:[0-9a-f]{64})?")


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


def check_image(ref: str) -> str:
    """`ref` if it is an image reference kubelet accepts (NAME[:TAG][@sha256:HEX])."""
    if not _IMAGE_REF.fullmatch(ref):
        raise InvalidArgument(f"image {ref!r}: expected NAME[:TAG][@sha256:<64 hex digits>]")
    return ref


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
    image: str = EXAMPLE_IMAGE  # the example Pod's
    deployment_image: str = DEPLOYMENT_IMAGE  # the example Deployment's: runs until stopped
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


def _pod_spec(o: Options, image: str) -> dict[str, Any]:
    return {
        "runtimeClassName": o.name,
        "restartPolicy": "Never",
        "containers": [{"name": "wasm", "image": image, "imagePullPolicy": "IfNotPresent"}],
    }


def pod(o: Options) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "wasm-example", "labels": {"app": "wasm-example"}},
        "spec": _pod_spec(o, o.image),
    }


def deployment(o: Options) -> dict[str, Any]:
    spec = {**_pod_spec(o, o.deployment_image), "restartPolicy": "Always"}
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
    label = [f"{k}={v}" for k, v in o.labels]
    return _node_job(o, "wasmtime-shim-installer", "install", [*label, "--overwrite"], None)


def uninstall_daemonset(o: Options) -> list[dict[str, Any]]:
    """The DaemonSet that takes the shim off every labelled node, then unlabels it (which
    ends its pod there: the nodeSelector no longer matches)."""
    label = [f"{k}-" for k, _ in o.labels]
    return _node_job(o, "wasmtime-shim-uninstaller", "uninstall", label, dict(o.labels))


def _node_job(
    o: Options,
    name: str,
    command: str,
    label_args: list[str],
    node_selector: dict[str, str] | None,
) -> list[dict[str, Any]]:
    """A DaemonSet running `wasmtime-shim COMMAND --root /host ... --restart` against each
    node's root, then `kubectl label node` with `label_args`, then idling."""
    meta = {"name": name, "namespace": o.namespace}
    args = [
        command,
        "--root",
        "/host",
        "--flavor",
        o.flavor,
        "--handler",
        o.handler,
        "--restart",
        *o.install_args,
    ]
    env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "hostPID": True,
        "initContainers": [
            {
                "name": command,
                "image": check_image(o.installer_image),
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "securityContext": {"privileged": True},
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
            },
            {
                "name": "label-node",
                "image": KUBECTL_IMAGE,
                "command": ["kubectl", "label", "node", "$(NODE_NAME)", *label_args],
                "env": env,
            },
        ],
        "containers": [{"name": "idle", "image": PAUSE_IMAGE}],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
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


def documents(o: Options, kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[dict[str, Any]]:
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
        elif kind == "uninstall":
            docs += uninstall_daemonset(o)
        else:
            raise InvalidArgument(f"unknown manifest {kind!r}; choose from {', '.join(KINDS)}")
    return docs


def render(o: Options, kinds: tuple[str, ...] = DEFAULT_KINDS) -> str:
    """Multi-document YAML, headed by the node commands as comments."""
    head = "# Prepare a node by hand (the DaemonSet below does the same):\n"
    head += "".join(f"#   {line}\n" for line in node_commands(o))
    return head + yaml.dump_all(documents(o, kinds))


def _tolerations(taints: tuple[Taint, ...]) -> list[dict[str, str]]:
    return [
        {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect} for t in taints
    ]
