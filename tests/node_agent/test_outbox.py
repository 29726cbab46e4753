"""The agent's outbox: order kept, nothing lost that matters, bounded while Redis is away."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from node_agent.outbox import Outbox, OutboxFull
from node_agent.protocol import Heartbeat, RunState, Snapshot, StateChange, StreamEnvelope


class FlakyRedis:
    """XADD that fails while `down` is set, as a Redis being restarted does."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.sent: list[StreamEnvelope] = []
        self.lock = threading.Lock()

    def xadd(self, stream: str, fields: dict[str, str], **_: Any) -> bytes:
        if self.down.is_set():
            raise redis.ConnectionError("Connection refused")
        with self.lock:
            self.sent.append(StreamEnvelope.model_validate_json(fields["data"]))
        return b"1-0"


def snap(seq: int, final: bool = False) -> Snapshot:
    return Snapshot(run_id="r", seq=seq, interval_start=0, interval_end=seq, final=final)


def beat(n: int) -> Heartbeat:
    return Heartbeat(host="web-1", agent_version=f"0.{n}")


def wait(predicate: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_events_wait_while_redis_is_away_and_leave_in_order() -> None:
    client = FlakyRedis()
    client.down.set()
    outbox = Outbox(client, "web-1")  # type: ignore[arg-type]
    try:
        for seq in range(5):
            outbox.publish(snap(seq), job_id="j")
        outbox.publish(StateChange(run_id="r", state=RunState.succeeded), job_id="j")
        time.sleep(0.3)
        assert client.sent == [] and outbox.waiting == 6
        client.down.clear()
        assert outbox.flush(10)
    finally:
        outbox.close()
    kinds = [(e.event.type, getattr(e.event, "seq", None)) for e in client.sent]
    assert kinds == [("snapshot", i) for i in range(5)] + [("state", None)]
    assert all(e.host == "web-1" and e.job_id == "j" for e in client.sent)


def test_a_full_outbox_drops_superseded_snapshots_and_beats_first() -> None:
    client = FlakyRedis()
    client.down.set()
    outbox = Outbox(client, "web-1", limit=4)  # type: ignore[arg-type]
    try:
        outbox.publish(beat(1))
        outbox.publish(beat(2))  # replaces beat 1: only the newest beat waits
        for seq in range(6):
            outbox.publish(snap(seq))
        outbox.publish(snap(6, final=True))
        outbox.publish(StateChange(run_id="r", state=RunState.succeeded))
        client.down.clear()
        assert outbox.flush(10)
    finally:
        outbox.close()
    events = [e.event for e in client.sent]
    # The final snapshot and the state always go; the newest cumulative snapshots fill the rest.
    assert [(e.type, getattr(e, "seq", None)) for e in events] == [
        ("snapshot", 4),
        ("snapshot", 5),
        ("snapshot", 6),
        ("state", None),
    ]
    assert outbox.dropped == 5


def test_only_when_nothing_can_be_dropped_is_an_event_refused() -> None:
    client = FlakyRedis()
    client.down.set()
    outbox = Outbox(client, "web-1", limit=2)  # type: ignore[arg-type]
    try:
        outbox.publish(snap(0, final=True))
        outbox.publish(StateChange(run_id="r", state=RunState.succeeded))
        with pytest.raises(OutboxFull, match="2 events wait for Redis"):
            outbox.publish(StateChange(run_id="r2", state=RunState.running))
    finally:
        client.down.clear()
        outbox.close()
    assert len(client.sent) == 2
