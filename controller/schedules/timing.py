"""Pure timing: when a schedule fires next, and what to do with slots missed while down.

All instants are timezone-aware and returned in UTC; cron fields are read in the schedule's
time zone, so "0 3 * * *" in Europe/Berlin stays at 03:00 local across a DST change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

# Past this many missed slots only a count is kept: a long outage must not write a row per slot.
MAX_RECORDED_SKIPS = 100
# A schedule fires at most once a second and at least once a leap year: beyond either end the
# slot arithmetic divides by ~0 or overflows a datetime.
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 366 * 86400.0


class TimingError(ValueError):
    """A bad cron expression, time zone or interval; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError("time_zone", f"unknown time zone {name!r}") from None


def check_cron(expr: str) -> None:
    # Five fields only: a seconds field would let a schedule flood the fleet.
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise TimingError("cron", f"bad cron expression {expr!r} (want 5 fields: m h dom mon dow)")


def check_interval(interval_s: float) -> None:
    if not math.isfinite(interval_s) or not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        raise TimingError(
            "interval_s",
            f"the interval must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds",
        )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class Timing:
    """A cron expression in a time zone, or a fixed interval on a grid starting at `anchor`."""

    cron: str | None = None
    time_zone: str = "UTC"
    interval_s: float | None = None
    anchor: datetime | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_s is None):
            raise TimingError("cron", "give exactly one of cron or interval_s")
        if self.cron is not None:
            check_cron(self.cron)
            zone(self.time_zone)
        if self.interval_s is not None:
            check_interval(self.interval_s)

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment`."""
        moment = _utc(moment)
        if self.cron is not None:
            local = moment.astimezone(zone(self.time_zone))
            found: datetime = croniter(self.cron, local).get_next(datetime)
            return _utc(found)
        assert self.interval_s is not None
        anchor = _utc(self.anchor) if self.anchor is not None else moment
        if moment < anchor:
            return anchor
        step = timedelta(seconds=self.interval_s)
        count = math.floor((moment - anchor) / step) + 1
        return anchor + step * count

    def latest_at_or_before(self, moment: datetime, *, since: datetime) -> datetime:
        """The last slot in [since, moment]; `since` must be a slot itself."""
        moment, since = _utc(moment), _utc(since)
        if self.interval_s is not None:
            step = timedelta(seconds=self.interval_s)
            return since + step * math.floor((moment - since) / step)
        assert self.cron is not None
        later = self.next_after(moment)
        local = later.astimezone(zone(self.time_zone))
        before = _utc(croniter(self.cron, local).get_prev(datetime))
        return max(before, since)


@dataclass(frozen=True)
class Plan:
    """What to do for a claimed slot that is due: fire one slot (or none), skip the rest."""

    fire: datetime | None
    skipped: list[datetime] = field(default_factory=list)
    not_recorded: int = 0  # missed slots beyond MAX_RECORDED_SKIPS, counted only
    next_fire_at: datetime | None = None
    reason: str | None = None  # why the slots were skipped


def plan_due(*, timing: Timing, due: datetime, now: datetime, grace_s: float) -> Plan:
    """After downtime, run only the latest missed slot, and only if within the grace window."""
    due, now = _utc(due), _utc(now)
    if due > now:
        return Plan(fire=None, next_fire_at=due)
    latest = timing.latest_at_or_before(now, since=due)
    missed: list[datetime] = []
    slot, extra = due, 0
    while slot < latest:
        if len(missed) < MAX_RECORDED_SKIPS:
            missed.append(slot)
            slot = timing.next_after(slot)
        else:
            extra = _count_between(timing, slot, latest)
            break
    following = timing.next_after(latest)
    late = (now - latest).total_seconds()
    if late <= grace_s:
        reason = f"missed: a later slot ({latest.isoformat()}) ran instead" if missed else None
        return Plan(
            fire=latest,
            skipped=missed,
            not_recorded=extra,
            next_fire_at=following,
            reason=reason,
        )
    reason = f"missed by {late:.0f}s, beyond the grace of {grace_s:g}s"
    return Plan(
        fire=None,
        skipped=[*missed, latest],
        not_recorded=extra,
        next_fire_at=following,
        reason=reason,
    )


def _count_between(timing: Timing, start: datetime, end: datetime) -> int:
    """Slots in [start, end): arithmetic for intervals, bounded iteration for cron."""
    if timing.interval_s is not None:
        return int((end - start) / timedelta(seconds=timing.interval_s))
    count, slot = 0, start
    while slot < end and count < 1_000_000:
        count += 1
        slot = timing.next_after(slot)
    return count


def blocked_by_overlap(*, allow_overlap: bool, previous_final: list[bool]) -> bool:
    """A slot is skipped while an earlier job of the schedule is unfinished, unless allowed."""
    return not allow_overlap and not all(previous_final)
