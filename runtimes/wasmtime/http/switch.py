"""Whether a container serves HTTP, read at Create from its spec (standard library only).

The switch is per container in its environment (`process.env`: the image's `Env` or a pod's
`env`), else per pod or per `ctr run` in the spec's annotations; the environment wins, so a
pod-wide annotation can be turned off for one container with `WASMTIME_HTTP=off`:

- mode: `WASMTIME_HTTP`, annotation `wasmtime.containerd.io/http`; off unless `wagi`;
- port: `WASMTIME_HTTP_PORT`, `wasmtime.containerd.io/http-port`; 8080;
- per-request timeout in seconds: `WASMTIME_HTTP_TIMEOUT`, `.../http-timeout`; 30;
- programs running at once: `WASMTIME_HTTP_CONCURRENCY`, `.../http-concurrency`; 16.

`proxy` (a wasi:http/proxy component) is refused here with the reason (PROXY_UNSUPPORTED);
any other value, a port outside 1-65535, a timeout outside (0, 3600] or a concurrency outside
1-1024 fails Create with INVALID_ARGUMENT naming the setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runtimes.base import HttpMode, HttpServing
from shim.errors import FailedPrecondition, InvalidArgument

ANNOTATION_PREFIX = "wasmtime.containerd.io/"
ENV_PREFIX = "WASMTIME_HTTP"
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONCURRENCY = 16
MAX_TIMEOUT = 3600.0
MAX_CONCURRENCY = 1024
OFF = ("", "off", "false", "0", "no")

PROXY_UNSUPPORTED = (
    "serving a wasi:http/proxy component (one that exports wasi:http/incoming-handler) is "
    "not supported: calling its handler needs the host to create an `incoming-request` and "
    "a `response-outparam` in the store's wasi:http resource table, and wasmtime's C API, "
    "which wasmtime-py binds, has no function for either (it only links wasi:http/types "
    "and wasi:http/outgoing-handler: wasmtime_component_linker_add_wasi_http, "
    "wasmtime_context_set_wasi_http); a resource the C API can create is of a host type of "
    "its own, never wasi:http's. Serve the program as a WAGI handler (a wasi:cli command "
    "that reads the request from its environment and stdin) instead"
)


def _setting(
    name: str, env: Mapping[str, str], annotations: Mapping[str, str]
) -> tuple[str, str] | None:
    """(value, where it came from) of one setting: the environment first."""
    env_name = ENV_PREFIX if not name else f"{ENV_PREFIX}_{name.upper()}"
    if env_name in env:
        return env[env_name], env_name
    key = ANNOTATION_PREFIX + ("http" if not name else f"http-{name}")
    if key in annotations:
        return annotations[key], f"annotation {key}"
    return None


def _number(
    name: str,
    env: Mapping[str, str],
    annotations: Mapping[str, str],
    default: float,
    low: float,
    high: float,
    integer: bool,
) -> float:
    found = _setting(name, env, annotations)
    if found is None:
        return default
    text, where = found
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high or (not integer and value <= 0):
        kind = "an integer" if integer else "a number of seconds"
        raise InvalidArgument(f"{where}={text!r}: must be {kind} in {low:g}..{high:g}")
    return value


def from_spec(env: Sequence[str], annotations: Mapping[str, str]) -> HttpServing | None:
    """The container's HTTP serving, or None when it runs as a plain program. Raises
    InvalidArgument for a bad value and FailedPrecondition for `proxy`."""
    env_map: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        env_map[key] = value  # the last one wins, as getenv(3) in most libcs sees it
    found = _setting("", env_map, annotations)
    if found is None or found[0].strip().lower() in OFF:
        return None
    mode_text, where = found[0].strip().lower(), found[1]
    if mode_text == "proxy":
        raise FailedPrecondition(f"{where}=proxy: {PROXY_UNSUPPORTED}")
    try:
        mode = HttpMode(mode_text)
    except ValueError:
        raise InvalidArgument(
            f"{where}={found[0]!r}: must be `wagi` (or `off`); see the README's HTTP section"
        ) from None
    return HttpServing(
        mode=mode,
        port=int(_number("port", env_map, annotations, DEFAULT_PORT, 1, 65535, True)),
        timeout=_number("timeout", env_map, annotations, DEFAULT_TIMEOUT, 0, MAX_TIMEOUT, False),
        max_concurrent=int(
            _number(
                "concurrency", env_map, annotations, DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY, True
            )
        ),
    )
