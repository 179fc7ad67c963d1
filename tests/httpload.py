"""A small HTTP load client: N requests over C keep-alive connections, each connection a
thread running http.client, and a JSON summary on stdout.

The e2e tests and bench/http.py run it inside a network namespace (`ip netns exec NS
python -m tests.httpload ...`), where the server under test listens. Every request is
counted: by status, or as an error (connect failure, reset, timeout, short read) with its
first message kept. A connection the server closes is reopened for the next request, as a
browser or wrk does.

    python -m tests.httpload URL [--requests 1000] [--concurrency 16] [--method GET]
                                 [--body TEXT] [--timeout 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _worker(
    url: str, method: str, body: bytes | None, count: int, timeout: float, tally: Tally
) -> None:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn: http.client.HTTPConnection | None = None
    for _ in range(count):
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.will_close:
                conn.close()
                conn = None
            status: int | None = resp.status
            error = ""
        except (OSError, http.client.HTTPException) as e:
            status, error = None, f"{type(e).__name__}: {e}"
            if conn is not None:
                conn.close()
            conn = None
        elapsed = time.perf_counter() - start
        with tally.lock:
            if status is None:
                tally.errors[error] += 1
            else:
                tally.statuses[status] += 1
                tally.latencies.append(elapsed)
    if conn is not None:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def run(
    url: str,
    requests: int,
    concurrency: int,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 30.0,
) -> dict[str, object]:
    tally = Tally()
    shares = [
        requests // concurrency + (1 if i < requests % concurrency else 0)
        for i in range(concurrency)
    ]
    threads = [
        threading.Thread(target=_worker, args=(url, method, body, n, timeout, tally))
        for n in shares
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "requests": requests,
        "concurrency": concurrency,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
        "seconds": elapsed,
        "requests_per_second": requests / elapsed if elapsed else 0.0,
        "p50_ms": percentile(tally.latencies, 50) * 1e3,
        "p99_ms": percentile(tally.latencies, 99) * 1e3,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    body = args.body.encode() if args.body is not None else None
    print(
        json.dumps(run(args.url, args.requests, args.concurrency, args.method, body, args.timeout))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
