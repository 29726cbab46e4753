"""Only the controller's signed work runs: real agents refuse forged, replayed, misaddressed and
expired tasks and forged cancels, each with a Refusal event and nothing loaded.

Tasks are pushed the way an attacker with the controller's Redis access would: straight onto a
host's queue (a Celery message, or the raw list entry copied from Redis).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from controller.keys.store import KeyStore
from controller.settings import Settings
from node_agent.protocol import Refusal, StateChange, StreamEnvelope, TraceRequest
from node_agent.signing import SignedEnvelope, sign
from node_agent.wire import cancel_key, events_stream, host_queue
from tests.controller.conftest import AgentProcess, Agents, RecordingDispatcher, Tokens
from tests.controller.support import get_job, job_final, submit, wait_for, wait_job

pytestmark = pytest.mark.bcc

HOSTS = ("sw-1", "sw-2")


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    # Long enough that Celery's own expiry header never hides a replay from the agent.
    return {"task_expiry_s": 120.0}


@pytest.fixture(scope="module")
def fleet(agent: Agents) -> dict[str, AgentProcess]:
    started = [agent.start(host, wait=False) for host in HOSTS]
    for one in started:
        agent.wait_online(one)
    return {a.host: a for a in started}


def request(run_id: str, duration_s: float = 2.0) -> TraceRequest:
    return TraceRequest(run_id=run_id, program="syscalls", duration_s=duration_s)


def new_run_id() -> str:
    return f"sw-{uuid.uuid4().hex[:12]}"


def signed(settings: Settings, host: str, run_id: str, **kw: Any) -> SignedEnvelope:
    key = kw.pop("key", None) or KeyStore(settings.keys_dir).signing_key()
    payload = kw.pop("payload", None) or request(run_id).model_dump(mode="json")
    return sign(key, host=host, run_id=run_id, action="run", payload=payload, ttl_s=60, **kw)


def push(dispatcher: RecordingDispatcher, host: str, value: object) -> None:
    """A task on the host's queue, as anyone with write access to Redis can send one."""
    dispatcher.celery.send_task(
        "fleettrace.run_trace",
        args=[value],
        queue=host_queue(host),
        routing_key=host_queue(host),
        task_id=str(uuid.uuid4()),
    )


def host_events(client: redis.Redis, host: str) -> list[Any]:
    """Every event `host` published (read from the stream, as ingest would)."""
    found = []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(events_stream(host))  # type: ignore[assignment]
    for _, fields in entries:
        env = StreamEnvelope.model_validate_json(fields[b"data"])
        if env.host == host:
            found.append(env.event)
    return found


def events(client: redis.Redis, host: str, run_id: str) -> list[Any]:
    return [e for e in host_events(client, host) if getattr(e, "run_id", None) == run_id]


def refusal(client: redis.Redis, host: str, run_id: str) -> Refusal:
    def find() -> Refusal | None:
        return next((e for e in events(client, host, run_id) if isinstance(e, Refusal)), None)

    found: Refusal = wait_for(find, 30, f"a refusal of {run_id} from {host}", 0.1)
    return found


def final_state(client: redis.Redis, host: str, run_id: str) -> str:
    def find() -> str | None:
        states = [e.state.value for e in events(client, host, run_id) if isinstance(e, StateChange)]
        return next((s for s in states if s not in ("pending", "running")), None)

    state: str = wait_for(find, 60, f"run {run_id} on {host} to end", 0.1)
    return state


def held_programs(pid: int) -> set[int]:
    """BPF program ids held open by `pid` or any of its descendants (from /proc fdinfo)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    progs: set[int] = set()
    for member in tree:
        fdinfo = Path(f"/proc/{member}/fdinfo")
        try:
            entries = list(fdinfo.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                text = entry.read_text()
            except OSError:
                continue
            progs |= {
                int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")
            }
    return progs


def assert_nothing_ran(client: redis.Redis, agent: AgentProcess, run_id: str) -> None:
    """No program held by the agent or its children, and no state for the run, a while after."""
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert not held_programs(agent.proc.pid), "the agent loaded a program"
        time.sleep(0.1)
    assert [type(e).__name__ for e in events(client, agent.host, run_id)] == ["Refusal"]
    assert agent.proc.poll() is None, agent.log_tail()


def test_a_signed_task_runs_and_its_programs_are_seen(
    fleet: dict[str, AgentProcess],
    settings: Settings,
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
) -> None:
    """The control for the refusals below: the same probe sees a program a good task loads."""
    run_id = new_run_id()
    push(
        dispatcher,
        "sw-1",
        signed(
            settings, "sw-1", run_id, payload=request(run_id, 4.0).model_dump(mode="json")
        ).model_dump(mode="json"),
    )
    wait_for(lambda: held_programs(fleet["sw-1"].proc.pid), 60, "the agent to load a program", 0.1)
    assert final_state(redis_client, "sw-1", run_id) == "succeeded"


Forge = Callable[[Settings, str], object]
FORGERIES: dict[str, tuple[str, Forge]] = {
    "unsigned request": ("bad_signature", lambda s, r: request(r).model_dump(mode="json")),
    "tampered payload": (
        "bad_signature",
        lambda s, r: {
            **signed(s, "sw-1", r).model_dump(mode="json"),
            "payload": request(r, 60).model_dump(mode="json"),
        },
    ),
    "truncated signature": (
        "bad_signature",
        lambda s, r: {
            **(e := signed(s, "sw-1", r).model_dump(mode="json")),
            "signature": e["signature"][:40],
        },
    ),
    "unknown key": (
        "unknown_key",
        lambda s, r: signed(s, "sw-1", r, key=Ed25519PrivateKey.generate()).model_dump(mode="json"),
    ),
    "expired, Celery header stripped": (
        "expired",
        lambda s, r: signed(s, "sw-1", r, now=time.time() - 3600).model_dump(mode="json"),
    ),
    "not JSON object": ("unreadable", lambda s, r: [r]),
}


@pytest.mark.parametrize("case", list(FORGERIES))
def test_a_forged_task_is_refused_and_loads_nothing(
    case: str,
    fleet: dict[str, AgentProcess],
    settings: Settings,
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
) -> None:
    reason, make = FORGERIES[case]
    run_id = new_run_id()
    push(dispatcher, "sw-1", make(settings, run_id))
    if reason == "unreadable":
        # Its run id cannot be read: find the refusal by what it says.
        wait_for(
            lambda: any(
                isinstance(e, Refusal) and e.reason.value == "unreadable" and e.run_id is None
                for e in host_events(redis_client, "sw-1")
            ),
            30,
            "an unreadable refusal",
        )
        return
    got = refusal(redis_client, "sw-1", run_id)
    assert got.reason.value == reason, got
    assert_nothing_ran(redis_client, fleet["sw-1"], run_id)
    assert f"refused task of run {run_id}: {reason}" in fleet["sw-1"].log_tail(20_000)


def test_a_captured_task_pushed_again_is_a_replay_and_on_another_queue_a_wrong_host(
    fleet: dict[str, AgentProcess],
    agent: Agents,
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
) -> None:
    run_id = new_run_id()
    # Queued for sw-3 before its agent is up: the raw list entry is copied, as an attacker would.
    dispatcher.send(host="sw-3", request=request(run_id), expires_s=120)
    raw = redis_client.lindex(host_queue("sw-3"), 0)
    assert raw is not None and run_id.encode() in raw
    sw3 = agent.start("sw-3")
    assert final_state(redis_client, "sw-3", run_id) == "succeeded"

    redis_client.lpush(host_queue("sw-3"), raw)
    assert refusal(redis_client, "sw-3", run_id).reason.value == "replay"
    redis_client.lpush(host_queue("sw-2"), raw)
    assert refusal(redis_client, "sw-2", run_id).reason.value == "wrong_host"
    assert_nothing_ran(redis_client, fleet["sw-2"], run_id)

    # The seen run ids survive a restart of the agent.
    agent.stop(sw3)
    sw3 = agent.start("sw-3")
    redis_client.lpush(host_queue("sw-3"), raw)

    def two_replays() -> bool:
        refused = [e for e in events(redis_client, "sw-3", run_id) if isinstance(e, Refusal)]
        return len(refused) == 2 and all(r.reason.value == "replay" for r in refused)

    wait_for(two_replays, 30, "the restarted agent to refuse the replay")
    ran = [e for e in events(redis_client, "sw-3", run_id) if isinstance(e, StateChange)]
    assert [e.state.value for e in ran].count("succeeded") == 1


def test_a_forged_cancel_does_not_stop_a_run_and_a_signed_one_does(
    fleet: dict[str, AgentProcess],
    settings: Settings,
    client: TestClient,
    tokens: Tokens,
    redis_client: redis.Redis,
) -> None:
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    job = submit(client, operator, duration_s=30, targets={"hosts": ["sw-1"]})
    run_id = job["runs"][0]["id"]
    wait_job(client, viewer, job["id"], lambda j: j["runs"][0]["state"] == "running", 60, "running")
    key = cancel_key("sw-1", run_id)
    store = KeyStore(settings.keys_dir)
    forged: dict[str, str | bytes] = {
        "unreadable": b"1",
        "unknown_key": sign(
            Ed25519PrivateKey.generate(),
            host="sw-1",
            run_id=run_id,
            action="cancel",
            payload={},
            ttl_s=60,
        ).model_dump_json(),
        "wrong_host": sign(
            store.signing_key(), host="sw-2", run_id=run_id, action="cancel", payload={}, ttl_s=60
        ).model_dump_json(),
    }
    for reason, value in forged.items():
        redis_client.set(key, value)

        def refused(reason: str = reason) -> bool:
            return any(
                isinstance(e, Refusal) and e.reason.value == reason
                for e in events(redis_client, "sw-1", run_id)
            )

        wait_for(refused, 10, f"the {reason} cancel to be refused")
    time.sleep(1.0)
    assert get_job(client, viewer, job["id"])["runs"][0]["state"] == "running"
    answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers=operator)
    assert answer.status_code == 200, answer.text
    done = wait_job(client, viewer, job["id"], job_final, 15, "the signed cancel to stop it")
    assert done["runs"][0]["state"] == "cancelled"


def test_a_shutdown_broadcast_leaves_the_agents_running(
    fleet: dict[str, AgentProcess],
    dispatcher: RecordingDispatcher,
    client: TestClient,
    tokens: Tokens,
) -> None:
    control = dispatcher.celery.control
    assert control.ping(timeout=1.0) == [], "a worker answers remote control"
    control.broadcast("shutdown")
    control.shutdown()
    time.sleep(3.0)
    for one in fleet.values():
        assert one.proc.poll() is None, one.log_tail()
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    job = submit(client, operator, targets={"hosts": list(HOSTS)})
    done = wait_job(client, viewer, job["id"], job_final, 60, "the job after the broadcast")
    assert done["state"] == "succeeded", done


def test_rotation_runs_tasks_of_the_old_and_the_new_key_then_retires_the_old(
    fleet: dict[str, AgentProcess],
    agent: Agents,
    settings: Settings,
    dispatcher: RecordingDispatcher,
    client: TestClient,
    tokens: Tokens,
    redis_client: redis.Redis,
) -> None:
    store = KeyStore(settings.keys_dir)
    old, old_key = store.signing_id(), store.signing_key()
    new = store.prepare()
    agent.trusted_keys_file()  # installed on hosts; agents re-read it without a restart
    before, after = new_run_id(), new_run_id()
    signed_old = signed(settings, "sw-2", before)
    assert store.rotate() == (new, old)
    signed_new = signed(settings, "sw-2", after)
    assert (signed_old.key_id, signed_new.key_id) == (old, new)
    push(dispatcher, "sw-2", signed_old.model_dump(mode="json"))
    push(dispatcher, "sw-2", signed_new.model_dump(mode="json"))
    assert final_state(redis_client, "sw-2", before) == "succeeded"
    assert final_state(redis_client, "sw-2", after) == "succeeded"

    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    job = submit(client, operator, targets={"hosts": ["sw-2"]})
    assert (
        wait_job(client, viewer, job["id"], job_final, 60, "a job after rotation")["state"]
        == "succeeded"
    )

    assert old is not None
    store.retire(old)
    agent.trusted_keys_file()
    late = new_run_id()
    push(dispatcher, "sw-2", signed(settings, "sw-2", late, key=old_key).model_dump(mode="json"))
    assert refusal(redis_client, "sw-2", late).reason.value == "unknown_key"


def test_an_agent_without_trusted_keys_says_so_and_refuses_everything(
    agent: Agents,
    settings: Settings,
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    lone = agent.start("sw-nokeys", trusted_keys=tmp_path / "absent.pub")
    assert "trusts NO controller key" in lone.log_tail(20_000)
    run_id = new_run_id()
    push(dispatcher, "sw-nokeys", signed(settings, "sw-nokeys", run_id).model_dump(mode="json"))
    got = refusal(redis_client, "sw-nokeys", run_id)
    assert got.reason.value == "unknown_key" and "trusted: none" in got.detail
    assert_nothing_ran(redis_client, lone, run_id)
    agent.stop(lone)
