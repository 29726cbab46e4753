"""One Redis identity per host, on real services: Redis with ACLs, Celery, a real agent, ingest.

web-1 runs a real agent with the identity the controller issued it; web-2 is registered and
has no agent. Whatever web-1 does with its own credentials, it cannot reach web-2's queue,
stream or cancels, nor administer Redis, nor speak for web-2 through its own stream.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.audit.models import AuditRecord
from controller.hosts.models import Host
from controller.jobs.models import JobEvent, Run, SnapshotRow
from controller.settings import Settings
from node_agent.protocol import RunState
from node_agent.wire import agent_user, cancel_key, client_url, events_stream, host_queue
from tests.controller.conftest import BIN, AgentProcess, Agents, Tokens
from tests.controller.support import (
    authenticates,
    capabilities,
    clean_env,
    counters,
    envelope,
    heartbeat,
    job_final,
    register_host,
    snapshot,
    state,
    submit,
    wait_for,
    wait_job,
)


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    # web-2 has no agent: its runs must stay pending long enough to show nothing touched them.
    return {"task_expiry_s": 120.0}


@pytest.fixture(scope="module")
def web1(agent: Agents) -> AgentProcess:
    return agent.start("web-1")


@pytest.fixture(scope="module")
def web2(client: TestClient, tokens: Tokens) -> str:
    register_host(client, tokens.headers("admin"), "web-2")
    return "web-2"


@pytest.fixture
def as_web1(web1: AgentProcess) -> Iterator[redis.Redis]:
    """A Redis client holding exactly what web-1's agent holds: its own identity."""
    client = redis.Redis.from_url(client_url(web1.redis_url))
    yield client
    client.close()


def _socket(settings: Settings) -> str:
    return urlsplit(settings.redis_url).path


def _drained(client: redis.Redis, settings: Settings, host: str) -> bool:
    """Ingest has read and acked everything on the host's stream."""
    for group in client.xinfo_groups(events_stream(host)):
        if group["name"] in (settings.ingest_group, settings.ingest_group.encode()):
            return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0
    return False


# (command, why it must be refused): with web-1's own credentials.
REFUSED = {
    "push to web-2's queue": ("LPUSH", host_queue("web-2"), "{}"),
    "pop web-2's queue": ("BRPOP", host_queue("web-2"), "1"),
    "append to web-2's stream": ("XADD", events_stream("web-2"), "*", "data", "{}"),
    "read web-2's stream": ("XRANGE", events_stream("web-2"), "-", "+"),
    "read any stream": ("XREAD", "STREAMS", events_stream("web-2"), "0"),
    "web-2's cancels": ("GET", cancel_key("web-2", "r1")),
    "set its own cancel": ("SET", cancel_key("web-1", "r1"), "1"),
    "web-2's bindings": ("SMEMBERS", f"_kombu.binding.{host_queue('web-2')}"),
    "list keys": ("KEYS", "*"),
    "scan keys": ("SCAN", "0"),
    "read the config": ("CONFIG", "GET", "*"),
    "flush everything": ("FLUSHALL",),
    "list ACL users": ("ACL", "LIST"),
    "become someone else": ("ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*"),
    "publish": ("PUBLISH", "celery.pidbox", "x"),
    "run a script": ("EVAL", "return 1", "0"),
    "the controller's keys": ("GET", "fleettrace:hosts:version"),
}


@pytest.mark.parametrize("command", REFUSED.values(), ids=list(REFUSED))
def test_web1s_identity_is_refused_everything_but_its_own(
    as_web1: redis.Redis, web2: str, command: tuple[str, ...]
) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError) as refused:
        as_web1.execute_command(*command)  # type: ignore[no-untyped-call]
    assert "no permissions" in str(refused.value)


def test_web1s_identity_does_its_own_work(as_web1: redis.Redis) -> None:
    assert as_web1.xadd(events_stream("web-1"), {"data": "not json"})
    assert as_web1.get(cancel_key("web-1", "no-such-run")) is None
    assert as_web1.llen(host_queue("web-1")) >= 0


def _raw(path: str, *commands: tuple[str, ...]) -> list[bytes]:
    """Each command's first reply line, straight off the socket (no client library between)."""
    replies = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        for command in commands:
            parts = [f"*{len(command)}\r\n".encode()]
            for arg in command:
                parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
            sock.sendall(b"".join(parts))
            replies.append(reader.readline().strip())
    return replies


def test_without_its_credentials_redis_answers_nothing(
    settings: Settings, web1: AgentProcess
) -> None:
    path = _socket(settings)
    (none,) = _raw(path, ("GET", cancel_key("web-1", "x")))
    assert none.startswith(b"-NOAUTH"), none
    guessed, after = _raw(
        path, ("AUTH", agent_user("web-1"), "guess"), ("GET", cancel_key("web-1", "x"))
    )
    assert guessed.startswith(b"-WRONGPASS"), guessed
    assert after.startswith(b"-NOAUTH"), after
    (default,) = _raw(path, ("AUTH", "default", ""))
    assert default.startswith(b"-WRONGPASS"), default


@pytest.mark.bcc
def test_web1s_agent_runs_a_real_trace_with_only_its_own_identity(
    web1: AgentProcess,
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
) -> None:
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    job = submit(client, operator, duration_s=2, interval_s=0.5, targets={"hosts": ["web-1"]})
    done = wait_job(client, viewer, job["id"], job_final, 60, "web-1's job to finish")
    assert done["state"] == "succeeded", done
    with sessions() as session:
        rows = session.scalars(
            select(SnapshotRow).where(SnapshotRow.job_id == job["id"]).order_by(SnapshotRow.seq)
        ).all()
        assert rows and rows[-1].final and all(r.host_name == "web-1" for r in rows)
    # The agent's connections are web-1's identity; it holds nothing of the controller's.
    users = {c.get("user") for c in redis_client.client_list() if c.get("name") != "controller"}
    assert agent_user("web-1") in users
    controller_secret = urlsplit(settings.redis_url).password or ""
    with open(f"/proc/{web1.proc.pid}/environ", "rb") as env:
        assert controller_secret.encode() not in env.read()
    with open(f"/proc/{web1.proc.pid}/cmdline", "rb") as cmdline:
        assert controller_secret.encode() not in cmdline.read()


def test_an_envelope_on_web1s_stream_speaking_for_web2_is_ignored_and_logged(
    web1: AgentProcess,
    web2: str,
    as_web1: redis.Redis,
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = submit(client, tokens.headers("operator"), targets={"hosts": [web2]})
    (run,) = job["runs"]
    final = snapshot(run["id"], 0, [counters("c", {"x": 1})], final=True)
    forged = [
        envelope(web2, state(run["id"], "running"), job["id"]),
        envelope(web2, final, job["id"]),
        # Its own name, another host's run: the run's host decides.
        envelope("web-1", state(run["id"], "failed"), job["id"]),
        # A heartbeat whose body speaks for web-2.
        envelope("web-1", heartbeat(web2, capabilities())),
    ]
    with caplog.at_level(logging.WARNING, logger="controller.ingest.consumer"):
        for data in forged:
            as_web1.xadd(events_stream("web-1"), {"data": data})
        wait_for(lambda: _drained(redis_client, settings, "web-1"), 20, "ingest to read web-1")
    with sessions() as session:
        stored = session.get(Run, run["id"])
        assert stored is not None and stored.state == RunState.pending.value
        snapshots = session.scalars(select(SnapshotRow).where(SnapshotRow.run_id == run["id"]))
        assert list(snapshots) == []
        events = session.scalars(
            select(JobEvent.kind).where(JobEvent.run_id == run["id"], JobEvent.kind != "state")
        ).all()
        assert "snapshot" not in events
        host = session.scalar(select(Host).where(Host.name == web2))
        assert host is not None and host.last_heartbeat is None
    claims = [
        r.getMessage()
        for r in caplog.records
        if "web-1's stream claims to come from web-2" in r.getMessage()
    ]
    assert len(claims) == 3, [r.getMessage() for r in caplog.records]
    assert any("sent an event for web-2's run" in r.getMessage() for r in caplog.records)
    with sessions() as session:
        audited = session.scalars(
            select(AuditRecord).where(
                AuditRecord.action == "agent.impersonation", AuditRecord.actor == "web-1"
            )
        ).all()
    assert len(audited) >= 3, "each impersonation is on record, by the stream's host"
    assert all("claims to come from web-2" in str(r.summary) for r in audited[-3:])


def test_a_host_nobody_added_is_never_heard(
    web1: AgentProcess,
    client: TestClient,
    tokens: Tokens,
    settings: Settings,
    redis_client: redis.Redis,
    agent: Agents,
) -> None:
    # Even written with the controller's own rights: no identity, no stream read, no host.
    redis_client.xadd(
        events_stream("stranger"), {"data": envelope("stranger", heartbeat("stranger", None))}
    )
    # web-1's next heartbeats go through ingest: by then the stranger's would have too.
    seen = agent.wait_online(web1)["last_heartbeat"]
    wait_for(lambda: agent.wait_online(web1)["last_heartbeat"] != seen, 10, "two rounds of ingest")
    viewer = tokens.headers("viewer")
    assert client.get("/v1/hosts/stranger", headers=viewer).status_code == 404
    assert redis_client.xinfo_groups(events_stream("stranger")) == []


@pytest.mark.parametrize("name", ["web*1", "web 1", "web:1", "-web", "a" * 129, "web-1?", "web[1]"])
def test_a_bad_host_name_is_refused_by_the_agent_and_the_api(
    name: str, client: TestClient, tokens: Tokens
) -> None:
    agent = subprocess.run(
        [str(BIN / "fleettrace-agent"), "worker", "--host", name],
        capture_output=True,
        text=True,
        env=clean_env(FLEETTRACE_AGENT_CONFIG="/dev/null"),
        timeout=60,
        check=False,
    )
    assert agent.returncode == 2, agent.stderr
    assert "--host" in agent.stderr and len(agent.stderr.strip().splitlines()) == 1
    answer = client.post("/v1/hosts", json={"name": name}, headers=tokens.headers("admin"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "name"]


def test_rotating_and_removing_a_host_ends_its_old_credentials(
    client: TestClient, tokens: Tokens, redis_client: redis.Redis
) -> None:
    admin = tokens.headers("admin")
    created = register_host(client, admin, "gone-1")
    first = created["join"]["redis_url"]
    assert created["join"]["command"].endswith("fleettrace-agent worker --host gone-1")
    assert authenticates(first)
    holding = redis.Redis.from_url(client_url(first))
    assert holding.ping()
    rotated = client.post("/v1/hosts/gone-1/credential", headers=admin)
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["redis_url"]
    assert second != first
    assert not authenticates(first)
    with pytest.raises(redis.ConnectionError):
        holding.ping()  # the connection made with the old secret was closed
    holding.close()
    assert authenticates(second)
    # The secret is shown once: nothing the API answers later carries it.
    secret = urlsplit(second).password or ""
    assert secret not in client.get("/v1/hosts/gone-1", headers=admin).text
    assert secret not in client.get("/v1/hosts", headers=admin).text
    assert client.delete("/v1/hosts/gone-1", headers=admin).status_code == 204
    assert not authenticates(second)
    assert redis_client.acl_getuser(agent_user("gone-1")) is None


def test_identities_redis_lost_are_put_back_and_the_agent_comes_back(
    web1: AgentProcess, agent: Agents, redis_client: redis.Redis
) -> None:
    # As after a Redis restart without an ACL file: the user is gone, its agent cut off.
    redis_client.acl_deluser(agent_user("web-1"))
    assert not authenticates(web1.redis_url)
    wait_for(lambda: authenticates(web1.redis_url), 30, "ingest to put web-1's identity back")
    seen = agent.wait_online(web1)["last_heartbeat"]
    wait_for(
        lambda: agent.wait_online(web1)["last_heartbeat"] != seen, 30, "web-1 heartbeating again"
    )
