"""Everything an agent sends is bounded: a traced host controls it and the controller stores it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from node_agent.protocol import (
    MAX_SEQ,
    MAX_TEXT,
    Heartbeat,
    StateChange,
    StreamEnvelope,
    TraceError,
)


def snapshot(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "snapshot",
        "run_id": "r1",
        "seq": 0,
        "interval_start": 1.0,
        "interval_end": 2.0,
        "results": [],
    }
    event.update(changes)
    return {"host": "web-1", "event": event}


def table(rows: list[Any], **changes: Any) -> dict[str, Any]:
    result = {
        "kind": "counter_table",
        "name": "counts",
        "key_fields": [{"name": "path", "type": "path"}],
        "rows": rows,
    }
    result.update(changes)
    return result


def stacks(depth: int) -> dict[str, Any]:
    return {
        "kind": "folded_stacks",
        "name": "cpu",
        "stacks": [{"frames": ["f"] * depth, "count": 1}],
    }


def lhist(low: int, high: int, step: int, buckets: list[list[int]]) -> dict[str, Any]:
    bounds = {"min": low, "max": high, "step": step}
    return {"kind": "linear_histogram", "name": "h", "unit": "us", **bounds, "buckets": buckets}


def heartbeat(**changes: Any) -> dict[str, Any]:
    event = {"type": "heartbeat", "host": "web-1", "agent_version": "0.1.0"}
    event.update(changes)
    return {"host": "web-1", "event": event}


HOSTILE: dict[str, dict[str, Any]] = {
    "seq of 2**64": snapshot(seq=2**64),
    "seq past 32 bits": snapshot(seq=MAX_SEQ + 1),
    "negative seq": snapshot(seq=-1),
    "NaN time": snapshot(interval_end=float("nan")),
    "infinite time": snapshot(interval_start=float("inf")),
    "count past u64": snapshot(results=[table([[["/x"], [2**64]]])]),
    "negative count": snapshot(results=[table([[["/x"], [-5]]])]),
    "key longer than PATH_MAX": snapshot(results=[table([[["x" * (MAX_TEXT + 1)], [1]]])]),
    "too many rows": snapshot(results=[table([[["/x"], [1]]] * 100_001)]),
    "too many key fields": snapshot(results=[table([[["/x"] * 33, [1]]])]),
    "stack 2,000 frames deep": snapshot(results=[stacks(2000)]),
    "histogram slot 1,000": snapshot(
        results=[{"kind": "log2_histogram", "name": "h", "unit": "us", "buckets": [[1000, 1]]}]
    ),
    "linear histogram of 10**12 buckets": snapshot(results=[lhist(0, 10**12, 1, [])]),
    "linear histogram slot past overflow": snapshot(results=[lhist(0, 30, 10, [[5, 1]])]),
    "linear histogram max below min": snapshot(results=[lhist(30, 0, 10, [])]),
    "agent version of 200 chars": heartbeat(agent_version="v" * 200),
    "host with a space": heartbeat(host="web 1"),
    "host with an escape": heartbeat(host="web-1\x1b[2J"),
    "envelope host of 300 chars": {**heartbeat(), "host": "h" * 300},
    "a million running runs": heartbeat(running=["r"] * 1025),
    "run id of 1,000 chars": snapshot(run_id="r" * 1000),
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_entries_are_refused_by_the_protocol(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StreamEnvelope.model_validate_json(json.dumps(raw))


def test_the_largest_honest_snapshot_is_accepted() -> None:
    rows = [[["/" + "p" * (MAX_TEXT - 1)], [2**64 - 1]]] * 1000
    raw = snapshot(seq=MAX_SEQ, results=[table(rows), stacks(254)])
    envelope = StreamEnvelope.model_validate_json(json.dumps(raw))
    assert envelope.event.type == "snapshot"


def test_free_text_an_agent_writes_is_cut_not_refused() -> None:
    error = TraceError(code="internal", message="m" * 100_000)
    assert len(error.message) == MAX_TEXT and error.message.endswith("[... cut]")
    change = StateChange(run_id="r", state="failed", reason="x" * 10_000)
    assert change.reason is not None and len(change.reason) == MAX_TEXT


def test_every_host_name_the_api_accepts_can_speak_the_protocol() -> None:
    from controller.hosts.models import HostCreate

    longest = "h" * 128
    HostCreate(name=longest)
    beat = Heartbeat(host=longest, agent_version="1")
    StreamEnvelope.model_validate_json(StreamEnvelope(host=longest, event=beat).model_dump_json())
    with pytest.raises(ValidationError):
        HostCreate(name=longest + "h")
    with pytest.raises(ValidationError):
        Heartbeat(host=longest + "h", agent_version="1")
