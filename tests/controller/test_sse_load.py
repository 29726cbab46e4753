"""Many live viewers on one controller: `fleettrace serve` with a real agent, on both databases.

200 SSE streams stay open on a running job while `/healthz` answers and another job is
submitted and runs to its end; every stream then receives the whole job and ends with it.
A token past its cap of open streams gets 429, and closing a stream frees its slot.
Latencies are measured in bench/sse.py, not here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.keys.store import KeyStore
from tests.controller.conftest import BIN, Tokens
from tests.controller.support import clean_env, free_port, send_json, stop_process, wait_for

pytestmark = pytest.mark.bcc

HOST = "sse-1"
CAP = 20
VIEWERS = 10  # tokens; CAP streams each: 200 streams
Frame = tuple[int | None, str, bytes]


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    return db_url


@dataclass
class Served:
    base: str
    log: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def served(
    database_url: str,
    redis_url: str,
    engine: Any,
    tokens: Tokens,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """`fleettrace serve` (API, ingest, scheduler) and one real agent, on the module's database:
    the host added through the API (its own Redis identity), the agent trusting serve's key."""
    workdir = tmp_path_factory.mktemp("serve")
    port = free_port()
    keys_dir = workdir / "keys"
    env = clean_env(
        FLEETTRACE_DATABASE_URL=database_url,
        FLEETTRACE_REDIS_URL=redis_url,
        FLEETTRACE_API_HOST="127.0.0.1",
        FLEETTRACE_API_PORT=str(port),
        FLEETTRACE_SSE_STREAMS_PER_TOKEN=str(CAP),
        FLEETTRACE_HEARTBEAT_TIMEOUT_S="30",
        FLEETTRACE_KEYS_DIR=str(keys_dir),
    )
    log = workdir / "serve.log"
    agent_log = workdir / "agent.log"
    agent: subprocess.Popen[bytes] | None = None
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "fleettrace"), "serve", "--no-worker"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", log, proc)
    try:

        def up() -> bool:
            assert proc.poll() is None, f"serve exited:\n{served.log_tail()}"
            try:
                return httpx.get(f"{served.base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "fleettrace serve to answer", 0.2)
        admin = tokens.headers("admin")
        added = send_json("POST", f"{served.base}/v1/hosts", admin, {"name": HOST}, expect=201)
        trusted = workdir / "controller-keys.pub"
        trusted.write_text(KeyStore(keys_dir).trusted_keys_text())
        with agent_log.open("wb") as agent_out:
            agent = subprocess.Popen(
                [str(BIN / "fleettrace-agent"), "worker", "--host", HOST],
                cwd=workdir,
                env=clean_env(
                    FLEETTRACE_HEARTBEAT_S="0.5",
                    FLEETTRACE_AGENT_CONFIG=os.devnull,
                    FLEETTRACE_REDIS_URL=added["join"]["redis_url"],
                    FLEETTRACE_TRUSTED_KEYS=str(trusted),
                    FLEETTRACE_STATE_DIR=str(workdir / "agent-state"),
                ),
                stdout=agent_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield served
    finally:
        if agent is not None:
            stop_process(agent)
        stop_process(proc)


@pytest.fixture(scope="module")
def viewers(tokens: Tokens) -> list[dict[str, str]]:
    return [{"Authorization": f"Bearer {tokens.make('viewer')}"} for _ in range(VIEWERS)]


def online(served: Served, tokens: Tokens) -> None:
    def check() -> bool:
        assert served.proc.poll() is None, served.log_tail()
        answer = httpx.get(f"{served.base}/v1/hosts/{HOST}", headers=tokens.headers("viewer"))
        return answer.status_code == 200 and answer.json()["state"] == "online"

    wait_for(check, 90, f"host {HOST} online", 0.2)


@dataclass
class Stream:
    """One SSE subscriber, keeping each frame as (id, event, raw data): cheap enough for 200."""

    frames: list[Frame] = field(default_factory=list)
    status: int | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        async with client.stream("GET", url, headers=headers) as answer:
            self.status = answer.status_code
            self.opened.set()
            if answer.status_code != 200:
                await answer.aread()
                return
            buffer = b""
            async for chunk in answer.aiter_raw():
                *blocks, buffer = (buffer + chunk).split(b"\n\n")
                for block in blocks:
                    fields = dict(
                        line.split(b": ", 1) for line in block.split(b"\n") if b": " in line
                    )
                    if b"event" in fields:
                        event_id = int(fields[b"id"]) if b"id" in fields else None
                        event = fields[b"event"].decode()
                        self.frames.append((event_id, event, fields.get(b"data", b"")))

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.frames]


async def submit(
    client: httpx.AsyncClient, headers: dict[str, str], duration_s: float
) -> dict[str, Any]:
    job = {
        "program": "syscalls",
        "params": {"per_process": False},
        "duration_s": duration_s,
        "interval_s": 1.0,
        "targets": {"hosts": [HOST]},
    }
    answer = await client.post("/v1/jobs", json=job, headers=headers)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def job_state(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> str:
    answer = await client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["state"])


async def until(what: str, check: Any, timeout_s: float) -> None:
    """Poll an async check until it is true; fail naming what did not happen."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def client_for(served: Served) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=served.base,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        timeout=httpx.Timeout(60.0, read=None),
    )


@pytest.mark.timeout(900)
def test_200_streams_leave_the_api_answering_and_all_get_the_whole_job(
    served: Served, tokens: Tokens, viewers: list[dict[str, str]]
) -> None:
    online(served, tokens)
    operator = tokens.headers("operator")

    async def scenario() -> tuple[list[Stream], list[Frame], dict[str, Any]]:
        async with client_for(served) as client:
            watched = await submit(client, operator, duration_s=600)
            url = f"/v1/jobs/{watched['id']}/events"
            streams = [Stream() for _ in range(VIEWERS * CAP)]
            tasks = [
                asyncio.create_task(s.follow(client, url, viewers[i % VIEWERS]))
                for i, s in enumerate(streams)
            ]
            await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in streams)), 120)
            assert [s.status for s in streams] == [200] * len(streams)

            async def snapshots_flowing() -> bool:
                return all("snapshot" in s.kinds() for s in streams)

            await until("a snapshot on every stream", snapshots_flowing, 60)
            for _ in range(20):
                health = await client.get("/healthz")
                assert health.status_code == 200 and health.json() == {"status": "ok"}
            other = await submit(client, operator, duration_s=1)

            async def other_done() -> bool:
                return await job_state(client, operator, other["id"]) == "succeeded"

            try:
                await until("the second job to succeed", other_done, 60)
            except AssertionError:
                late = await client.get(f"/v1/jobs/{other['id']}", headers=operator)
                raise AssertionError(f"second job: {late.json()}") from None
            # All of that happened while every stream was open and the watched job ran.
            ended = [
                (s.frames[-1:], t.exception())
                for s, t in zip(streams, tasks, strict=True)
                if t.done()
            ]
            job_now = (await client.get(f"/v1/jobs/{watched['id']}", headers=operator)).json()
            assert not ended, f"{len(ended)} streams ended early: {ended[0]}; {job_now}"
            assert await job_state(client, operator, watched["id"]) == "running"

            cancel = await client.post(f"/v1/jobs/{watched['id']}/cancel", headers=operator)
            assert cancel.status_code == 200, cancel.text
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            replay = Stream()
            await replay.follow(client, url, viewers[0])
            final = (await client.get(f"/v1/jobs/{watched['id']}", headers=operator)).json()
            return streams, replay.frames, final

    streams, replay, final = asyncio.run(asyncio.wait_for(scenario(), 600))
    assert final["state"] == "cancelled", final
    assert replay[-1][1] == "end" and replay[-2][1] == "job"
    assert json.loads(replay[-2][2]) == {"state": "cancelled"}
    kinds = [kind for _, kind, _ in replay]
    assert kinds.count("snapshot") >= 2 and kinds.count("state") >= 3, kinds
    ids = [frame[0] for frame in replay[:-1]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for stream in streams:
        assert stream.frames == replay


def test_a_token_past_its_cap_gets_429_and_a_closed_stream_frees_its_slot(
    served: Served, tokens: Tokens
) -> None:
    online(served, tokens)
    operator = tokens.headers("operator")
    capped = {"Authorization": f"Bearer {tokens.make('viewer')}"}
    other = {"Authorization": f"Bearer {tokens.make('viewer')}"}

    async def scenario() -> None:
        async with client_for(served) as client:
            job = await submit(client, operator, duration_s=600)
            url = f"/v1/jobs/{job['id']}/events"
            streams = [Stream() for _ in range(CAP)]
            tasks = [asyncio.create_task(s.follow(client, url, capped)) for s in streams]
            await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in streams)), 60)
            assert [s.status for s in streams] == [200] * CAP

            over = await client.get(url, headers=capped)
            assert over.status_code == 429, over.text
            detail = over.json()["detail"]
            assert f"{CAP} event streams open" in detail
            assert "FLEETTRACE_SSE_STREAMS_PER_TOKEN" in detail

            # Another token is not affected.
            theirs = Stream()
            their_task = asyncio.create_task(theirs.follow(client, url, other))
            await asyncio.wait_for(theirs.opened.wait(), 30)
            assert theirs.status == 200

            tasks[0].cancel()  # the client goes away: its connection closes
            await asyncio.gather(tasks[0], return_exceptions=True)
            again = Stream()
            again_task: asyncio.Task[None] | None = None

            async def slot_free() -> bool:
                nonlocal again, again_task
                again = Stream()
                again_task = asyncio.create_task(again.follow(client, url, capped))
                await again.opened.wait()
                if again.status == 200:
                    return True
                await again_task
                return False

            await until("the closed stream's slot to be free", slot_free, 30)
            assert again_task is not None

            cancel = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=operator)
            assert cancel.status_code == 200, cancel.text
            await asyncio.wait_for(asyncio.gather(*tasks[1:], their_task, again_task), 60)
            for stream in [*streams[1:], theirs, again]:
                assert stream.frames[-1][1] == "end"
            # Every stream ended: the token's slots are all free again.
            after = Stream()
            await asyncio.wait_for(after.follow(client, url, capped), 30)
            assert after.status == 200 and after.frames[-1][1] == "end"

    asyncio.run(asyncio.wait_for(scenario(), 300))
