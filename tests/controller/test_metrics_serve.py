"""/metrics of a real `fleettrace serve`: its open port, and counts its ingest process makes.

Ingest runs in a child process of serve's: what it notes reaches the API process's /metrics
through Redis, which this checks with an agent's "accepted" event on the host's real stream.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from node_agent.wire import events_stream
from tests.controller.conftest import BIN
from tests.controller.metrics_support import promtool_check, total, value
from tests.controller.support import clean_env, envelope, free_port, state, stop_process, wait_for


@dataclass
class Served:
    api: str
    metrics: str
    env: dict[str, str]
    viewer: dict[str, str]
    admin: dict[str, str]
    log: Path


def _token(env: dict[str, str], cwd: Path, role: str) -> dict[str, str]:
    made = subprocess.run(
        [str(BIN / "fleettrace"), "tokens", "create", "--name", f"m-{role}", "--role", role],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return {"Authorization": f"Bearer {made.stdout.strip()}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    port, metrics_port = free_port(), free_port()
    env = clean_env(
        FLEETTRACE_DATABASE_URL=f"sqlite:///{tmp / 'fleettrace.db'}",
        FLEETTRACE_REDIS_URL=redis_url,
        FLEETTRACE_API_HOST="127.0.0.1",
        FLEETTRACE_API_PORT=str(port),
        FLEETTRACE_METRICS_PORT=str(metrics_port),
        FLEETTRACE_KEYS_DIR=str(tmp / "keys"),
    )
    viewer, admin = _token(env, tmp, "viewer"), _token(env, tmp, "admin")
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "fleettrace"), "serve", "--no-worker", "--no-scheduler"],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{api}/healthz", timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "serve to answer", 0.2)
        yield Served(api, f"http://127.0.0.1:{metrics_port}", env, viewer, admin, log)
    finally:
        stop_process(proc)


def test_the_open_port_needs_no_token_and_the_api_port_does(served: Served) -> None:
    assert httpx.get(f"{served.api}/metrics").status_code == 401
    with_token = httpx.get(f"{served.api}/metrics", headers=served.viewer)
    assert with_token.status_code == 200
    opened = httpx.get(f"{served.metrics}/metrics")
    assert opened.status_code == 200, opened.text
    assert value(opened.text, "fleettrace_up", {"source": "database"}) == 1
    assert value(opened.text, "fleettrace_up", {"source": "redis"}) == 1
    checked = promtool_check(opened.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The open port serves metrics only: no API, no data behind it.
    elsewhere = httpx.get(f"{served.metrics}/v1/hosts")
    assert '"data"' not in elsewhere.text


def test_what_the_ingest_process_notes_reaches_the_api_process(
    served: Served, redis_client: redis.Redis
) -> None:
    before = total(
        httpx.get(f"{served.metrics}/metrics").text, "fleettrace_dispatch_accept_seconds_count"
    )
    answer = httpx.post(f"{served.api}/v1/hosts", json={"name": "quiet"}, headers=served.admin)
    assert answer.status_code == 201, answer.text
    job = httpx.post(
        f"{served.api}/v1/jobs",
        json={"program": "syscalls", "duration_s": 2, "targets": {"hosts": ["quiet"]}},
        headers=served.admin,
    ).json()
    (run,) = job["runs"]
    # What quiet's agent sends when it takes the task, on quiet's own stream.
    redis_client.xadd(
        events_stream("quiet"), {"data": envelope("quiet", state(run["id"], "pending"))}
    )

    def noted() -> float | None:
        for url, headers in ((served.metrics, {}), (served.api, served.viewer)):
            text = httpx.get(f"{url}/metrics", headers=headers).text
            if total(text, "fleettrace_dispatch_accept_seconds_count") != before + 1:
                return None
        return before + 1

    wait_for(noted, 20, "the accepted run's dispatch latency on both ports", 0.2)


def test_fifty_scrapes_at_once_and_the_api_still_answers(served: Served) -> None:
    def one(i: int) -> int:
        if i % 5 == 0:
            return httpx.get(
                f"{served.api}/v1/hosts", headers=served.viewer, timeout=60
            ).status_code
        url = served.api if i % 2 else served.metrics
        headers = served.viewer if i % 2 else {}
        return httpx.get(f"{url}/metrics", headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=60) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses == [200] * 60


def test_a_metrics_port_in_use_stops_serve_with_one_line(served: Served, tmp_path: Path) -> None:
    taken = served.metrics.rsplit(":", 1)[1]
    env = {**served.env, "FLEETTRACE_API_PORT": str(free_port())}
    env["FLEETTRACE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'other.db'}"
    done = subprocess.run(
        [str(BIN / "fleettrace"), "serve", "--no-ingest", "--no-worker", "--metrics-port", taken],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot serve metrics on 127.0.0.1:{taken}" in last, done.stderr


def test_open_live_streams_are_counted_while_open(served: Served) -> None:
    answer = httpx.post(f"{served.api}/v1/hosts", json={"name": "watched"}, headers=served.admin)
    assert answer.status_code == 201, answer.text
    job = httpx.post(
        f"{served.api}/v1/jobs",
        json={"program": "syscalls", "duration_s": 2, "targets": {"hosts": ["watched"]}},
        headers=served.admin,
    ).json()

    def streams_open() -> float:
        text = httpx.get(f"{served.metrics}/metrics").text
        found = value(text, "fleettrace_sse_streams_open")
        assert found is not None
        return found

    assert streams_open() == 0
    url = f"{served.api}/v1/jobs/{job['id']}/events"
    with httpx.stream("GET", url, headers=served.viewer, timeout=30) as live:
        assert live.status_code == 200
        chunks = live.iter_bytes()  # kept: a dropped iterator may close the stream
        assert next(chunks)  # the job's first events: the stream is open
        wait_for(lambda: streams_open() == 1, 10, "one open stream counted", 0.2)
    wait_for(lambda: streams_open() == 0, 10, "the closed stream no longer counted", 0.2)
