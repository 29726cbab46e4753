"""Fire times and misfire/overlap decisions against a controlled clock (pure, no services)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from controller.schedules.timing import (
    MAX_RECORDED_SKIPS,
    Timing,
    TimingError,
    blocked_by_overlap,
    plan_due,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: ZoneInfo | timezone = UTC) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[arg-type,misc]


def slots(timing: Timing, start: datetime, count: int) -> list[datetime]:
    found, moment = [], start
    for _ in range(count):
        moment = timing.next_after(moment)
        found.append(moment)
    return found


def test_interval_slots_lie_on_a_grid_from_the_anchor() -> None:
    timing = Timing(interval_s=90, anchor=at(2026, 1, 1, 0, 0, 0))
    assert slots(timing, at(2026, 1, 1, 0, 0, 0), 3) == [
        at(2026, 1, 1, 0, 1, 30),
        at(2026, 1, 1, 0, 3, 0),
        at(2026, 1, 1, 0, 4, 30),
    ]
    # From between two slots, and from exactly on one: always strictly after.
    assert timing.next_after(at(2026, 1, 1, 0, 2, 0)) == at(2026, 1, 1, 0, 3, 0)
    assert timing.next_after(at(2026, 1, 1, 0, 3, 0)) == at(2026, 1, 1, 0, 4, 30)


def test_cron_in_utc_and_in_another_zone() -> None:
    utc = Timing(cron="15 3 * * *")
    assert utc.next_after(at(2026, 6, 1, 12, 0)) == at(2026, 6, 2, 3, 15)
    ny = Timing(cron="15 3 * * *", time_zone="America/New_York")
    # 03:15 in New York in June (EDT, UTC-4) is 07:15 UTC.
    assert ny.next_after(at(2026, 6, 1, 12, 0)) == at(2026, 6, 2, 7, 15)
    assert ny.next_after(at(2026, 6, 1, 12, 0)).tzinfo == UTC
    hourly = Timing(cron="0 * * * 1-5")  # weekdays only: 2026-06-06 is a Saturday
    assert hourly.next_after(at(2026, 6, 5, 23, 30)) == at(2026, 6, 8, 0, 0)


def test_daily_cron_keeps_local_time_across_the_berlin_dst_changes() -> None:
    daily = Timing(cron="0 3 * * *", time_zone="Europe/Berlin")
    # Spring forward on 2026-03-29: 03:00 local is 02:00 UTC before, 01:00 UTC after.
    spring = slots(daily, at(2026, 3, 27, 12, 0), 3)
    assert [s.astimezone(BERLIN).hour for s in spring] == [3, 3, 3]
    assert [s.hour for s in spring] == [2, 1, 1]
    assert spring[1] - spring[0] == timedelta(hours=23)
    # Fall back on 2026-10-25: that day has 25 hours.
    autumn = slots(daily, at(2026, 10, 23, 12, 0), 3)
    assert [s.astimezone(BERLIN).hour for s in autumn] == [3, 3, 3]
    assert autumn[1] - autumn[0] == timedelta(hours=25)


def test_a_slot_inside_the_skipped_spring_hour_fires_once_at_the_jump() -> None:
    timing = Timing(cron="30 2 * * *", time_zone="Europe/Berlin")
    found = slots(timing, at(2026, 3, 27, 12, 0), 3)
    local = [s.astimezone(BERLIN) for s in found]
    assert [(d.day, d.hour, d.minute) for d in local] == [(28, 2, 30), (29, 3, 0), (30, 2, 30)]
    assert len(set(found)) == 3 and found == sorted(found)


def test_hourly_cron_keeps_every_real_hour_when_clocks_go_back() -> None:
    timing = Timing(cron="0 * * * *", time_zone="Europe/Berlin")
    found = slots(timing, at(2026, 10, 24, 22, 30), 5)  # 00:30 local, summer time
    gaps = {b - a for a, b in itertools.pairwise(found)}
    assert gaps == {timedelta(hours=1)}, found
    # 02:00 local happens twice, as two distinct instants.
    assert [s.astimezone(BERLIN).hour for s in found] == [1, 2, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 0 * * * *"}, "cron"),  # no seconds field
        ({"cron": "0 3 * * *", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": -5}, "interval_s"),
        ({"interval_s": float("nan")}, "interval_s"),
    ],
)
def test_bad_timing_names_its_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(TimingError) as caught:
        Timing(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_on_time_slot_fires_and_nothing_is_skipped() -> None:
    timing = Timing(interval_s=60, anchor=at(2026, 1, 1))
    due = at(2026, 1, 1, 0, 1)
    plan = plan_due(timing=timing, due=due, now=due + timedelta(seconds=2), grace_s=30)
    assert plan.fire == due
    assert plan.skipped == []
    assert plan.next_fire_at == at(2026, 1, 1, 0, 2)


def test_a_slot_not_yet_due_does_nothing() -> None:
    timing = Timing(interval_s=60, anchor=at(2026, 1, 1))
    due = at(2026, 1, 1, 0, 1)
    plan = plan_due(timing=timing, due=due, now=due - timedelta(seconds=1), grace_s=30)
    assert plan.fire is None and plan.skipped == [] and plan.next_fire_at == due


def test_after_downtime_only_the_latest_slot_runs_within_grace() -> None:
    timing = Timing(interval_s=60, anchor=at(2026, 1, 1))
    due = at(2026, 1, 1, 0, 1)
    now = at(2026, 1, 1, 0, 5, 10)  # down for slots 0:01 .. 0:05
    plan = plan_due(timing=timing, due=due, now=now, grace_s=30)
    assert plan.fire == at(2026, 1, 1, 0, 5)
    assert plan.skipped == [at(2026, 1, 1, 0, m) for m in (1, 2, 3, 4)]
    assert plan.next_fire_at == at(2026, 1, 1, 0, 6)
    assert plan.reason is not None and "later slot" in plan.reason


def test_a_latest_slot_beyond_grace_is_skipped_too() -> None:
    timing = Timing(interval_s=60, anchor=at(2026, 1, 1))
    due = at(2026, 1, 1, 0, 1)
    plan = plan_due(timing=timing, due=due, now=at(2026, 1, 1, 0, 3, 45), grace_s=30)
    assert plan.fire is None
    assert plan.skipped == [at(2026, 1, 1, 0, m) for m in (1, 2, 3)]
    assert plan.next_fire_at == at(2026, 1, 1, 0, 4)
    assert plan.reason is not None and "grace" in plan.reason


def test_cron_misfire_after_a_night_down() -> None:
    timing = Timing(cron="0 * * * *", time_zone="Europe/Berlin")
    due = at(2026, 3, 29, 0, 0, tz=BERLIN)
    now = at(2026, 3, 29, 5, 0, 20, tz=BERLIN)  # across the spring-forward gap
    plan = plan_due(timing=timing, due=due, now=now, grace_s=60)
    assert plan.fire == at(2026, 3, 29, 5, 0, tz=BERLIN)
    # 00, 01, 03, 04 local: 02:00 does not exist that night.
    assert [s.astimezone(BERLIN).hour for s in plan.skipped] == [0, 1, 3, 4]


def test_a_very_long_outage_records_a_bounded_number_of_skips() -> None:
    timing = Timing(interval_s=1, anchor=at(2026, 1, 1))
    due = at(2026, 1, 1, 0, 0, 1)
    now = due + timedelta(days=1)
    plan = plan_due(timing=timing, due=due, now=now, grace_s=5)
    assert plan.fire == now
    assert len(plan.skipped) == MAX_RECORDED_SKIPS
    assert len(plan.skipped) + plan.not_recorded == 86_400
    assert plan.next_fire_at == now + timedelta(seconds=1)


def test_overlap_policy() -> None:
    assert blocked_by_overlap(allow_overlap=False, previous_final=[True, False])
    assert not blocked_by_overlap(allow_overlap=False, previous_final=[True, True])
    assert not blocked_by_overlap(allow_overlap=False, previous_final=[])
    assert not blocked_by_overlap(allow_overlap=True, previous_final=[False])
