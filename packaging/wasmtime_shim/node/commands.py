"""`wasmtime-shim install | uninstall | doctor | manifests`: the node side, as subcommands.

Argument parsing only; the work is in the other modules of this package. Every command is
non-interactive and idempotent, for node images and DaemonSet installers; user errors raise
shim.errors classes, which wasmtime_shim/main.py turns into one line and exit status 1.

`--restart` restarts containerd only when the config changed (install.restart_pending), and
every run says which it was, so a DaemonSet's log shows why a node was (or was not) disturbed.
`--sleep` then waits for SIGTERM: the installer image's default command, for a DaemonSet
container that must stay up once its work is done.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from wasmtime_shim.node import config as cfg
from wasmtime_shim.node import doctor, files, install, manifests
from wasmtime_shim.node.flavors import FLAVORS, flavor
from wasmtime_shim.node.restart import Restarter


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "install",
        help="install the shim binary and register it in containerd's config",
        description="Copy the shim into a bin dir on containerd's PATH and add "
        "runtimes.<handler> (runtime_type io.containerd.wasmtime.v1) to containerd's config, "
        "keeping every other byte. Running it again changes nothing.",
    )
    _target_args(p)
    p.add_argument("--binary", type=Path, help="the built binary (default: the running one)")
    p.add_argument(
        "--runtime-path", action="store_true", help="also write runtime_path = <bin-dir>/<shim>"
    )
    p.add_argument(
        "--wasm-annotations",
        action="store_true",
        help=f"pass the pod annotations {', '.join(cfg.WASM_POD_ANNOTATIONS)} to the shim",
    )
    p.add_argument(
        "--config-version",
        type=int,
        choices=(2, 3),
        help="version of a config we must create (2: containerd 1.x, 3: 2.x; default: ask "
        "`containerd config default`)",
    )
    p.add_argument("--force", action="store_true", help="overwrite a different registration")
    _daemon_args(p)
    p.set_defaults(func=_install)

    p = subparsers.add_parser("uninstall", help="reverse install exactly")
    _target_args(p)
    _daemon_args(p)
    p.set_defaults(func=_uninstall)

    p = subparsers.add_parser(
        "doctor",
        help="check that this node can run the shim",
        description="One line per check; exit status 1 when any check failed.",
    )
    _target_args(p)
    p.add_argument(
        "--address",
        help="containerd's socket to ask (default: the flavor's, under --root)",
    )
    p.set_defaults(func=_doctor)

    p = subparsers.add_parser(
        "manifests", help="print the RuntimeClass, examples and installer DaemonSet (YAML)"
    )
    p.add_argument("--handler", default=cfg.DEFAULT_HANDLER)
    p.add_argument("--name", help="RuntimeClass name (default: the handler)")
    p.add_argument(
        "--node-label",
        action="append",
        metavar="KEY=VALUE",
        help=f"label of prepared nodes (repeatable; default {'='.join(manifests.DEFAULT_LABEL)})",
    )
    p.add_argument(
        "--taint",
        action="append",
        default=[],
        metavar="KEY=VALUE:EFFECT",
        help="taint of prepared nodes, e.g. kubernetes.io/arch=wasm32-wasi:NoSchedule",
    )
    p.add_argument("--image", default=manifests.EXAMPLE_IMAGE, help="the example Pod's image")
    p.add_argument(
        "--deployment-image",
        default=manifests.DEPLOYMENT_IMAGE,
        help="the example Deployment's image (a program that runs until stopped)",
    )
    p.add_argument(
        "--installer-image",
        default=manifests.DEFAULT_INSTALLER_IMAGE,
        help="the DaemonSets' image, e.g. REGISTRY/NAME@sha256:DIGEST (the digest that "
        "`make installer-image` prints)",
    )
    p.add_argument("--namespace", default="kube-system", help="namespace of the DaemonSet")
    p.add_argument("--flavor", choices=sorted(FLAVORS), default="containerd")
    p.add_argument(
        "--only",
        choices=manifests.KINDS,
        action="append",
        help=f"only these kinds (default: {', '.join(manifests.DEFAULT_KINDS)}; `uninstall` "
        "is the DaemonSet that takes the shim off the nodes)",
    )
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    p.set_defaults(func=_manifests)


def _daemon_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--restart",
        action="store_true",
        help="restart containerd (systemd) when the config changed, and check it came back",
    )
    p.add_argument(
        "--sleep",
        action="store_true",
        help="then wait until terminated (a DaemonSet container that must stay up)",
    )


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flavor", choices=sorted(FLAVORS), default="containerd")
    p.add_argument("--config", help="containerd's config file (default: the flavor's)")
    p.add_argument("--root", type=Path, default=Path("/"), help="the node's / (DaemonSet: /host)")
    p.add_argument("--prefix", help="bin dir PREFIX/bin, lib dir PREFIX/lib/...")
    p.add_argument("--bin-dir", help=f"where the binary goes (default {install.DEFAULT_BIN_DIR})")
    p.add_argument("--lib-dir", help=f"the bundle's dir (default {install.DEFAULT_LIB_DIR})")
    p.add_argument("--handler", default=cfg.DEFAULT_HANDLER, help="runtimes.<handler>")


def target(args: argparse.Namespace) -> install.Target:
    """The install Target the flags describe (paths absolute, as on the node)."""
    prefix = args.prefix.rstrip("/") if args.prefix else None
    bin_dir = args.bin_dir or (f"{prefix}/bin" if prefix else install.DEFAULT_BIN_DIR)
    lib_dir = args.lib_dir or (
        f"{prefix}/lib/containerd-shim-wasmtime" if prefix else install.DEFAULT_LIB_DIR
    )
    config = os.path.abspath(args.config) if args.config else None
    shim_path = f"{os.path.abspath(bin_dir)}/containerd-shim-wasmtime-v1"
    entry = cfg.RuntimeEntry(
        handler=args.handler,
        runtime_path=shim_path if getattr(args, "runtime_path", False) else None,
        pod_annotations=cfg.WASM_POD_ANNOTATIONS
        if getattr(args, "wasm_annotations", False)
        else (),
    )
    return install.Target(
        flavor=flavor(args.flavor),
        root=args.root,
        bin_dir=os.path.abspath(bin_dir),
        lib_dir=os.path.abspath(lib_dir),
        config=config,
        entry=entry,
        config_version=getattr(args, "config_version", None),
    )


def _install(args: argparse.Namespace) -> int:
    t = target(args)
    config = t.on_node(t.config_path)
    before = files.sha256_file(config)
    for line in install.install(t, args.binary, force=args.force):
        print(line, flush=True)
    pending = install.restart_pending(t)
    if pending and not args.restart and files.sha256_file(config) == before:
        print(
            f"containerd not restarted: {t.config_path} is unchanged by this run; an earlier "
            f"run changed it: restart {t.flavor.units[0]} to load it (or pass --restart)",
            flush=True,
        )
    else:
        _restart_if(t, pending, args.restart)
    if pending and args.restart:
        install.restarted(t)
    return _sleep() if args.sleep else 0


def _uninstall(args: argparse.Namespace) -> int:
    t = target(args)
    config = t.on_node(t.config_path)
    before = files.sha256_file(config)
    for line in install.uninstall(t):
        print(line, flush=True)
    _restart_if(t, files.sha256_file(config) != before, args.restart)
    return _sleep() if args.sleep else 0


def _restart_if(t: install.Target, changed: bool, restart: bool) -> None:
    """Say whether containerd needs a restart; with `restart`, restart it when it does."""
    unit = t.flavor.units[0]
    if not changed:
        print(f"containerd not restarted: {t.config_path} is unchanged", flush=True)
    elif not restart:
        print(f"{t.config_path} changed: restart {unit} to load it (or pass --restart)", flush=True)
    else:
        print(f"{t.config_path} changed: restarting containerd", flush=True)
        for line in Restarter(t.flavor, t.root, t.shim_path).restart():
            print(line, flush=True)


def _sleep() -> int:
    """Wait for SIGTERM or SIGINT, then exit 0. As a container's PID 1 a signal without a
    handler is ignored, so the handlers are what lets `kubectl delete` end us promptly."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("done; sleeping until terminated", flush=True)
    while True:
        signal.pause()


def _doctor(args: argparse.Namespace) -> int:
    t = target(args)
    address = args.address or t.flavor.socket
    node = doctor.Node(t.flavor, t.root, t.config_path, args.handler, address)
    checks = doctor.diagnose(node)
    for check in checks:
        print(check.line())
    return 1 if any(c.status is doctor.Status.FAIL for c in checks) else 0


def _manifests(args: argparse.Namespace) -> int:
    options = manifests.Options(
        handler=args.handler,
        name=args.name or args.handler,
        labels=tuple(map(manifests.parse_label, args.node_label))
        if args.node_label
        else (manifests.DEFAULT_LABEL,),
        taints=tuple(map(manifests.Taint.parse, args.taint)),
        image=manifests.check_image(args.image),
        deployment_image=manifests.check_image(args.deployment_image),
        installer_image=manifests.check_image(args.installer_image),
        namespace=args.namespace,
        flavor=args.flavor,
    )
    text = manifests.render(options, tuple(args.only) if args.only else manifests.DEFAULT_KINDS)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
