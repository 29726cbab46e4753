"""RedisLink's bookkeeping with a fake clock: bounded backoff, one log line per outage."""

from __future__ import annotations

import logging

import pytest
import redis

from controller.ingest.link import RedisLink, is_nogroup


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "controller.ingest.link"]


def test_backoff_doubles_up_to_its_bound_and_an_outage_logs_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="controller.ingest.link")
    clock = Clock()
    link = RedisLink("ingest", first_s=0.5, max_s=4.0, clock=clock)
    link.up()
    assert link.is_up and link.hearing_since is not None and link.ready()
    delays = []
    for _ in range(40):
        delays.append(link.down(redis.ConnectionError("refused")))
        assert not link.ready() and link.hearing_since is None
        clock.now += delays[-1]
        assert link.ready()
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 4.0] and max(delays) == 4.0
    link.up()
    assert link.is_up and link.hearing_since is not None and link.wait_s() == 0
    lines = _lines(caplog)
    assert len(lines) == 2, lines
    assert "redis unavailable (refused)" in lines[0]
    assert "back after" in lines[1] and "(40 failed tries)" in lines[1]
    # The next outage starts from the first delay again.
    assert link.down(redis.TimeoutError("slow")) == 0.5


@pytest.mark.parametrize(
    ("message", "nogroup"),
    [
        ("NOGROUP No such key 'fleettrace:events' or consumer group 'controller'", True),
        ("BUSYGROUP Consumer Group name already exists", False),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ],
)
def test_nogroup_is_told_apart(message: str, nogroup: bool) -> None:
    assert is_nogroup(redis.ResponseError(message)) is nogroup
