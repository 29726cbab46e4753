"""bpftrace's `-f json` output read into the protocol's result kinds.

Each printed map replaces what an earlier print of it said (prints are cumulative):
count/sum/min/max/avg maps become counter tables (value field named after the function,
aggregated as the function says), stats() a table of count, average and total, hist() log2
histograms, lhist() linear histograms, a count()/sum() map keyed by a stack folded stacks
(other key fields as root frames), and printf lines and plain values bounded samples.
Nothing a traced host prints raises out of `take`: what cannot be read is counted by reason,
per map, and sent as the `bpftrace.skipped` table.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from node_agent.bounds import MAX_COUNT, MAX_STACK_DEPTH, MAX_TEXT
from node_agent.bpftrace.histograms import HistogramReader
from node_agent.bpftrace.keys import (
    FieldKind,
    KeyNames,
    KeySplitter,
    clip,
    integer,
    stack_frames,
)
from node_agent.kinds import CounterTable, EventSamples, FoldedStacks, KeyField, StackCount
from node_agent.kinds.counter_table import Aggregation
from node_agent.protocol import KeyValue, Limits, Result

log = logging.getLogger(__name__)

MAP_TYPES = ("map", "stats", "hist")
TEXT_TYPES = ("printf", "time", "join", "value")
SKIPPED = "bpftrace.skipped"
# (value field, its aggregation over hosts and time) per function that fills a counter table
TABLE_FIELDS: dict[str, list[tuple[str, Aggregation]]] = {
    "count": [("count", "sum")],
    "sum": [("sum", "sum")],
    "min": [("min", "min")],
    "max": [("max", "max")],
    "avg": [("avg", "mean")],
    "stats": [("count", "sum"), ("average", "mean"), ("total", "sum")],
}


def _valid_map_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name.startswith("@")
        and len(name) <= 64
        and all(c.isascii() and (c.isalnum() or c == "_") for c in name[1:])
    )


class Maps:
    """The latest print of every map, read from bpftrace's JSON messages."""

    def __init__(
        self,
        *,
        limits: Limits,
        functions: Mapping[str, str],
        keys: KeyNames,
        lhist: Mapping[str, tuple[int, int, int]] | None = None,
        key_kinds: Mapping[str, Sequence[FieldKind]] | None = None,
    ) -> None:
        self.limits = limits
        self.functions = functions
        self.keys = keys
        self.key_kinds = key_kinds or {}
        self.histograms = HistogramReader(lhist or {}, limits.max_rows)
        self.lost = 0
        self._maps: dict[str, list[Result]] = {}
        self._skipped: dict[str, Counter[str]] = {}
        self._text: deque[list[KeyValue | float]] = deque(maxlen=limits.max_samples)
        self._text_seen = 0
        self._ignored: Counter[str] = Counter()

    def take(self, message: Mapping[str, Any]) -> bool:
        """One decoded JSON message; True if it was a map, text or lost-events message."""
        try:
            return self._take(message)
        except Exception:  # a hostile print must never stop the run; it is counted
            log.exception("bpftrace output: a message could not be read")
            self._ignored["unreadable message"] += 1
            return False

    def _take(self, message: Mapping[str, Any]) -> bool:
        kind, data = message.get("type"), message.get("data")
        if kind == "lost_events":
            lost = integer(data.get("events")) if isinstance(data, Mapping) else None
            if lost is None or lost < 0:
                self._ignored["lost_events without a count"] += 1
                return False
            self.lost = min(self.lost + lost, MAX_COUNT)
            return True
        if kind in TEXT_TYPES:
            self._text_seen += 1
            text = data if isinstance(data, str) else str(data)[:MAX_TEXT]
            self._text.append([time.time(), clip(text.rstrip("\n"))])
            return True
        if kind not in MAP_TYPES:
            return False
        if not isinstance(data, Mapping) or not data:
            self._ignored[f"{kind} message without maps"] += 1
            return False
        for name, payload in data.items():
            if not _valid_map_name(name):
                self._ignored["bad map name"] += 1
                continue
            skipped: Counter[str] = Counter()
            self._maps[name] = self._read(str(kind), name, payload, skipped)
            self._skipped[name] = skipped
        return True

    def ignore(self, reason: str) -> None:
        """Count output the engine left out before it reached here (a line too long to read)."""
        self._ignored[reason] += 1

    def reset(self) -> None:
        """Forget the maps read so far: bpftrace prints no line for an empty (cleared) map,
        so a full print of every map starts from nothing. Text samples are kept."""
        self._maps.clear()
        self._skipped.clear()

    def results(self) -> list[Result]:
        out = [r for results in self._maps.values() for r in results]
        if self._text_seen:
            events = list(self._text)
            out.append(
                EventSamples(
                    name="printf",
                    fields=["time", "text"],
                    events=events,
                    seen=self._text_seen,
                    dropped=self._text_seen - len(events),
                )
            )
        skipped = self._skipped_table()
        if skipped is not None:
            out.append(skipped)
        return out

    def _skipped_table(self) -> CounterTable | None:
        rows: list[tuple[list[KeyValue], list[int]]] = [
            ([name, reason], [n]) for name, c in self._skipped.items() for reason, n in c.items()
        ]
        rows += [(["", reason], [n]) for reason, n in self._ignored.items()]
        if not rows:
            return None
        rows.sort(key=lambda row: -row[1][0])
        return CounterTable(
            name=SKIPPED,
            key_fields=[KeyField(name="map"), KeyField(name="reason")],
            rows=rows,
            total_rows=len(rows),
        )

    # -- one map --------------------------------------------------------------------------

    def _function(self, kind: str, name: str, payload: object) -> str:
        known = self.functions.get(name)
        if known is not None:
            return known
        if kind == "hist":
            return "hist"  # or lhist: histograms.py tells them apart by their buckets
        if kind == "stats":
            return "stats" if _stats_shaped(payload) else "avg"
        return "value"

    def _read(self, kind: str, name: str, payload: object, skipped: Counter[str]) -> list[Result]:
        function = self._function(kind, name, payload)
        if kind == "hist" or function in ("hist", "lhist"):
            if kind != "hist":
                skipped[f"{function}() printed as {kind}"] += 1
                return []
            told = self.functions.get(name, "")
            told = told if told in ("hist", "lhist") else ""
            return self.histograms.read(name, told, payload, self._splitter(name), skipped)
        if function == "stats" and _scalar_stats(payload):
            entries: list[tuple[str | None, object]] = [(None, payload)]
        elif isinstance(payload, Mapping):
            entries = [(str(k), v) for k, v in payload.items()]
        else:
            entries = [(None, payload)]
        if function in TABLE_FIELDS:
            return self._table_or_stacks(name, function, entries, skipped)
        return [self._samples(name, entries, skipped)]

    def _splitter(self, name: str) -> KeySplitter:
        return KeySplitter(name, self.keys, self.key_kinds.get(name))

    def _keyed(
        self, name: str, entries: list[tuple[str | None, object]], skipped: Counter[str]
    ) -> tuple[KeySplitter, list[tuple[list[str], object]]]:
        """Each entry's key fields (none for a scalar map) beside its value; keys that do not
        split are left out (and counted)."""
        splitter = self._splitter(name)
        if all(key is None for key, _ in entries):
            splitter.kinds = []
            return splitter, [([], value) for _, value in entries]
        keys = [key or "" for key, _ in entries]
        split = splitter.split_all(keys, skipped)
        return splitter, [(f, v) for f, (_, v) in zip(split, entries, strict=True) if f is not None]

    def _values(self, function: str, value: object) -> list[int] | None:
        if function == "stats":
            if not isinstance(value, Mapping):
                return None
            got = [integer(value.get(f)) for f, _ in TABLE_FIELDS["stats"]]
            return [v for v in got if v is not None] if None not in got else None
        one = integer(value)
        if one is not None and function == "sum" and one >= 2**63:
            one -= 2**64  # 0.17 types a map first written by `-=` unsigned: a u64 of a negative
        return None if one is None else [one]

    def _table_or_stacks(
        self,
        name: str,
        function: str,
        entries: list[tuple[str | None, object]],
        skipped: Counter[str],
    ) -> list[Result]:
        splitter, keyed = self._keyed(name, entries, skipped)
        rows: list[tuple[list[str], list[int]]] = []
        for fields, value in keyed:
            values = self._values(function, value)
            if values is None:
                skipped[f"{function}() value that is not an integer"] += 1
            else:
                rows.append((fields, values))
        if splitter.has_stack() and function in ("count", "sum"):  # they add up in a flame
            return [self._stacks(name, function, splitter, rows, skipped)]
        columns = TABLE_FIELDS[function]
        rows.sort(key=lambda row: (-row[1][0], row[0]))
        kept = rows[: self.limits.max_rows]  # only the kept keys are made safe and typed
        return [
            CounterTable(
                name=name,
                key_fields=splitter.fields(),
                value_fields=[f for f, _ in columns],
                aggregations=[a for _, a in columns],
                rows=[(splitter.values(f), v) for f, v in kept],
                total_rows=len(rows),
                truncated=len(kept) < len(rows),
            )
        ]

    def _stacks(
        self,
        name: str,
        function: str,
        splitter: KeySplitter,
        rows: list[tuple[list[str], list[int]]],
        skipped: Counter[str],
    ) -> FoldedStacks:
        """Other key fields first (a process name as the root frame), then each stack root
        first, in the key's order."""
        counts: Counter[tuple[str, ...]] = Counter()
        for fields, values in rows:
            if len(values) != 1 or values[0] < 0:
                skipped[f"stack map of {function}() values below 0"] += 1
                continue
            frames = [clip(f) for f, k in zip(fields, splitter.kinds, strict=True) if k != "stack"]
            for field, kind in zip(fields, splitter.kinds, strict=True):
                if kind == "stack":
                    frames += [clip(frame) for frame in stack_frames(field)]
            counts[tuple(frames[:MAX_STACK_DEPTH])] += values[0]
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = ordered[: self.limits.max_rows]
        return FoldedStacks(
            name=name,
            unit=function,
            stacks=[StackCount(frames=list(f), count=min(c, MAX_COUNT)) for f, c in kept],
            total_rows=len(ordered),
            truncated=len(kept) < len(ordered),
        )

    def _samples(
        self, name: str, entries: list[tuple[str | None, object]], skipped: Counter[str]
    ) -> EventSamples:
        """A plain value per key (`@x[pid] = comm`, `@t = (1, "a")`): the latest ones."""
        splitter, keyed = self._keyed(name, entries, skipped)
        events: list[list[KeyValue | float]] = []
        for fields, value in keyed:
            number = integer(value)
            shown: KeyValue = number if number is not None else clip(_text(value))
            events.append([*splitter.values(fields), shown])
        kept = events[len(events) - self.limits.max_samples :] if self.limits.max_samples else []
        return EventSamples(
            name=name,
            fields=[f.name for f in splitter.fields()] + ["value"],
            events=kept,
            seen=len(events),
            dropped=len(events) - len(kept),
        )


def _scalar_stats(payload: object) -> bool:
    """stats() of a scalar map prints {"count", "average", "total"}; keyed, a dict of those."""
    return (
        isinstance(payload, Mapping)
        and "count" in payload
        and not any(isinstance(v, Mapping) for v in payload.values())
    )


def _stats_shaped(payload: object) -> bool:
    if not isinstance(payload, Mapping) or not payload:
        return False
    if set(payload) == {"count", "average", "total"}:
        return True
    return all(isinstance(v, Mapping) for v in payload.values())


def _text(value: object) -> str:
    """A non-integer value as text: JSON for tuples and the like."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)[:MAX_TEXT]
    except (TypeError, ValueError):
        return repr(value)[:MAX_TEXT]
