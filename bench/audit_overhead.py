"""What the audit log costs a mutating call: the same app with and without its middleware.

Two uvicorn servers in this process on 127.0.0.1 share one migrated database (SQLite, or a
throwaway PostgreSQL with durable defaults): one is the real app, the other the same app with
the audit middleware taken out (the baseline). Rounds alternate between them so drift hits
both alike. Each call is a cheap mutation, PATCH /v1/hosts/NAME (labels), so the audit's
insert is as large a part of it as it gets; a read, GET /v1/hosts/NAME, shows the audit costs
reads nothing.

    .venv/bin/python bench/audit_overhead.py [--calls 200] [--rounds 4] [--db postgresql] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import _main
import httpx
import uvicorn
from _stack import create_token, database
from fastapi import FastAPI

from controller.app import create_app
from controller.audit.middleware import AuditMiddleware
from controller.settings import Settings
from devstack.harness import free_port, wait_for


def _app(database_url: str, audited: bool) -> FastAPI:
    app = create_app(Settings(database_url=database_url))
    if not audited:
        # The stack is built at the first request: taking the middleware out here is enough.
        app.user_middleware = [m for m in app.user_middleware if m.cls is not AuditMiddleware]
    return app


@contextmanager
def _server(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 20, "uvicorn to answer")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.engine.dispose()


def _timed(client: httpx.Client, method: str, path: str, body: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        answer = client.request(method, path, json=body(i) if body else None)
        out.append(time.perf_counter() - started)
        if answer.status_code >= 300:
            raise SystemExit(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
    return out


def run(kind: str, calls: int, rounds: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="ft-bench-audit-") as tmp,
        database(kind, Path(tmp)) as url,
    ):
        token = create_token(url)
        headers = {"Authorization": f"Bearer {token}"}
        samples: dict[str, dict[str, list[float]]] = {
            name: {"write": [], "read": []} for name in ("audited", "baseline")
        }
        with _server(_app(url, True)) as audited, _server(_app(url, False)) as baseline:
            for url_ in (audited, baseline):
                with httpx.Client(base_url=url_, headers=headers) as client:
                    assert client.post("/v1/hosts", json={"name": _host(url_)}).status_code == 201
            for r in range(rounds):
                order = [("audited", audited), ("baseline", baseline)]
                for name, base in order if r % 2 == 0 else order[::-1]:
                    with httpx.Client(base_url=base, headers=headers) as client:
                        path = f"/v1/hosts/{_host(base)}"
                        labels = {"labels": {"round": str(r)}}
                        samples[name]["write"] += _timed(
                            client, "PATCH", path, lambda i, b=labels: b, calls
                        )
                        samples[name]["read"] += _timed(client, "GET", path, None, calls)
                print(f"{kind}: round {r + 1}/{rounds} done", file=sys.stderr)
    return samples


def _host(url: str) -> str:
    return "bench-" + url.rsplit(":", 1)[1]


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = _main.options(__doc__, rounds=4, db=True)
    parser.add_argument("--calls", type=int, default=200, help="calls per round and kind")
    args = parser.parse_args()
    samples = run(args.db, args.calls, args.rounds)
    return _main.finish(args, {"db": args.db, "samples_s": samples}, partial(print_table, args))


def print_table(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    samples = summary["samples_s"]
    print(f"\n{args.db}, {args.calls * args.rounds} calls each (ms)")
    print(f"{'':10}{'':10}{'median':>8}{'p90':>8}{'ratio':>8}")
    for kind in ("write", "read"):
        base = statistics.median(samples["baseline"][kind])
        for name in ("baseline", "audited"):
            values = samples[name][kind]
            ratio = statistics.median(values) / base
            print(f"{kind:10}{name:10}{_ms(values, 0.5):8.2f}{_ms(values, 0.9):8.2f}{ratio:8.2f}")


if __name__ == "__main__":
    sys.exit(main())
