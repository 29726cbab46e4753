"""Each run's results reduced once, so a report never walks millions of counter rows.

A digest keeps what a report reads: each histogram's dense bucket counts with its count,
percentiles and highest slot; each counter table's totals, its largest rows and its rows
summed over the non-pid key fields ("projected"), as two arrays sorted by a 64-bit hash of
the projected key; and the stacks. The projected keys themselves (the only large text) sit in
a separate, compressed `detail` that a report opens only for the few keys it names.

The ingest writes a run's digest with its final snapshot; a report digests any run whose
latest snapshot is newer than its digest (a live job, or a run that ended without a final).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.reports.analysis import comparable_fields, project
from node_agent.kinds import CounterTable, FoldedStacks, KeyField, Result
from node_agent.kinds.counter_table import Aggregation, combine
from node_agent.kinds.histogram import BucketHistogram, Scale, summarize
from node_agent.kinds.linear_histogram import LinearScale
from node_agent.kinds.log2_histogram import LOG2
from node_agent.protocol import KeyValue

log = logging.getLogger(__name__)

FORMAT = 2  # 2: arrays stored in their narrowest integer type
KEEP_TOP = 25  # rows kept in the body; `detail` holds up to MAX_TOP
MAX_TOP = 1000
I64 = np.dtype("<i8")
Ints = npt.NDArray[np.int64]
Row = tuple[list[KeyValue], list[int]]


@dataclass
class HistDigest:
    name: str
    unit: str
    labels: dict[str, KeyValue]
    count: int
    p50: int | None
    p90: int | None
    p99: int | None
    max_slot: int | None
    counts: Ints  # counts[slot], dense from slot 0
    scale: Scale = LOG2  # what each slot holds

    def buckets(self) -> list[tuple[int, int]]:
        return sparse(self.counts)


@dataclass
class TableDigest:
    name: str
    key_fields: list[KeyField]
    value_fields: list[str]
    comparable: list[str]  # the non-pid key fields, the projected key's fields
    rows: int
    truncated: bool
    totals: list[int]
    top: list[Row]  # the largest raw rows (pid fields kept), up to KEEP_TOP
    hashes: Ints  # projected keys' hashes, sorted, unique
    values: Ints  # shape (len(hashes), len(value_fields)), the projected sums
    aggregations: list[Aggregation] | None = None  # per value field; None: all sums


@dataclass
class TableDetail:
    keys: Sequence[Sequence[KeyValue]]  # projected keys, aligned with TableDigest.hashes
    top: list[Row]  # up to MAX_TOP raw rows

    def key(self, index: int) -> list[KeyValue]:
        return list(self.keys[index])


@dataclass
class RunDigest:
    seq: int
    results: int = 0  # how many results the snapshot had (any kind)
    histograms: list[HistDigest] = field(default_factory=list)
    tables: list[TableDigest] = field(default_factory=list)
    stacks: list[FoldedStacks] = field(default_factory=list)


I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


def _clamp(v: int) -> int:
    return v if I64_MIN <= v <= I64_MAX else (I64_MAX if v > 0 else I64_MIN)


def sparse(counts: Ints) -> list[tuple[int, int]]:
    """Dense bucket counts back to the protocol's sparse (slot, count) pairs."""
    return [(int(s), int(counts[s])) for s in np.flatnonzero(counts)]


def key_hash(key: tuple[KeyValue, ...]) -> int:
    """A signed 64-bit hash of a projected key (what the fleet groups by); str and int
    values stay apart since repr quotes strings."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def histogram(h: BucketHistogram) -> HistDigest:
    return dense_histogram(h.name, h.unit, h.labels, h.buckets, h.scale)


def dense_histogram(
    name: str,
    unit: str,
    labels: dict[str, KeyValue],
    buckets: Sequence[tuple[int, int]],
    scale: Scale,
) -> HistDigest:
    width = max((s for s, _ in buckets), default=-1) + 1
    dense = [0] * width
    for slot, count in buckets:
        dense[slot] += count
    counts = np.array([_clamp(c) for c in dense], dtype=np.int64)
    summary = summarize(buckets, scale, (50.0, 90.0, 99.0))
    return HistDigest(
        name=name,
        unit=unit,
        labels=dict(labels),
        count=summary.count,
        p50=summary.percentiles[50.0],
        p90=summary.percentiles[90.0],
        p99=summary.percentiles[99.0],
        max_slot=summary.max_slot,
        counts=counts,
        scale=scale,
    )


def table(t: CounterTable) -> tuple[TableDigest, TableDetail]:
    width = len(t.value_fields)
    keep = comparable_fields(t)
    projected: dict[tuple[KeyValue, ...], list[int]] = {}
    if len(keep) == len(t.key_fields):  # nothing to project away: rows are keys already
        projected = {tuple(k): v for k, v in t.rows}
    if len(projected) != len(t.rows):  # pid fields to sum over, or repeated keys
        projected = project(t)
    keys = list(projected)
    hashes = np.fromiter(map(key_hash, keys), dtype=np.int64, count=len(keys))
    table = np.zeros((len(keys), width), dtype=np.int64)
    if width and keys:
        rows = [v[:width] + [0] * (width - len(v[:width])) for v in projected.values()]
        try:
            table = np.array(rows, dtype=np.int64).reshape(len(keys), width)
        except OverflowError:  # a u64 counter past 2**63: kept at the int64 limit
            log.warning("table %s: values beyond 64-bit signed saturate at %d", t.name, I64_MAX)
            clamped = [[_clamp(v) for v in row] for row in rows]
            table = np.array(clamped, dtype=np.int64).reshape(len(keys), width)
    order = np.argsort(hashes, kind="stable")
    hashes, table = hashes[order], table[order]
    keys = [keys[i] for i in order]
    if len(hashes) > 1 and bool((hashes[1:] == hashes[:-1]).any()):
        # Two keys with one hash (about 1 in 2**64 per pair): summed, the first one named.
        log.warning("table %s: two keys share a 64-bit hash; their counts are summed", t.name)
        hashes, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        summed = np.zeros((len(hashes), width), dtype=np.int64)
        np.add.at(summed, inverse, table)
        table, keys = summed, [keys[i] for i in first]
    top = [(list(k), list(v)) for k, v in t.rows[:MAX_TOP]]
    # Python ints: exact whatever the counters' size
    totals = combine([v[:width] for _, v in t.rows], t.value_fields, t.aggregations)
    totals += [0] * (width - len(totals))
    digest = TableDigest(
        name=t.name,
        key_fields=list(t.key_fields),
        value_fields=list(t.value_fields),
        comparable=[t.key_fields[i].name for i in keep],
        rows=t.total_rows or len(t.rows),
        truncated=t.truncated,
        totals=totals,
        top=top[:KEEP_TOP],
        hashes=hashes,
        values=table,
        aggregations=t.aggregations,
    )
    return digest, TableDetail(keys=keys, top=top)


def digest(seq: int, results: Iterable[Result]) -> tuple[RunDigest, list[TableDetail]]:
    """Each result digested as its kind says (controller/kinds)."""
    from controller.kinds import view_of  # the views build on this module's digests

    run = RunDigest(seq=seq)
    details: list[TableDetail] = []
    for r in results:
        run.results += 1
        view_of(r).digest(r, run, details)
    return run, details


def _scale_of(body: dict[str, int] | None) -> Scale:
    """A digest's stored scale.spec(); digests written before scales had none: log2."""
    return LOG2 if body is None else LinearScale(body["min"], body["max"], body["step"])


# -- storage: a small JSON body, one blob of int64 arrays, a compressed detail ---------------


_NARROW: list[tuple[int, np.dtype[Any]]] = [
    (2**8 - 1, np.dtype("<u1")),
    (2**16 - 1, np.dtype("<u2")),
    (2**32 - 1, np.dtype("<u4")),
]


def _narrowest(a: Ints) -> np.dtype[Any]:
    if a.size and int(a.min()) >= 0:
        top = int(a.max())
        for limit, dtype in _NARROW:
            if top <= limit:
                return dtype
    return I64


def encode(run: RunDigest) -> tuple[dict[str, Any], bytes]:
    chunks: list[bytes] = []
    offset = 0

    def put(a: Ints) -> list[int | str]:
        """Counts are mostly small: stored as u1/u2/u4 when they fit (hashes never do)."""
        nonlocal offset
        dtype = _narrowest(a)
        data = np.ascontiguousarray(a, dtype=dtype).tobytes()
        chunks.append(data)
        where: list[int | str] = [offset, int(a.size), dtype.str]
        offset += len(data)
        return where

    body: dict[str, Any] = {
        "format": FORMAT,
        "seq": run.seq,
        "results": run.results,
        "histograms": [
            {
                "name": h.name,
                "unit": h.unit,
                "labels": h.labels,
                "count": h.count,
                "p": [h.p50, h.p90, h.p99],
                "max_slot": h.max_slot,
                "counts": put(h.counts),
                **({"scale": spec} if (spec := h.scale.spec()) else {}),
            }
            for h in run.histograms
        ],
        "tables": [
            {
                "name": t.name,
                "key_fields": [f.model_dump() for f in t.key_fields],
                "value_fields": t.value_fields,
                "comparable": t.comparable,
                "rows": t.rows,
                "truncated": t.truncated,
                "totals": t.totals,
                "top": t.top,
                "hashes": put(t.hashes),
                "values": put(t.values),
                **({"aggregations": t.aggregations} if t.aggregations else {}),
            }
            for t in run.tables
        ],
        "stacks": [s.model_dump(mode="json") for s in run.stacks],
    }
    return body, b"".join(chunks)


def decode(body: dict[str, Any], blob: bytes) -> RunDigest:
    def get(where: list[Any]) -> Ints:
        offset, size, dtype = where
        return np.frombuffer(blob, dtype=np.dtype(dtype), count=size, offset=offset).astype(
            np.int64, copy=False
        )

    hists = [
        HistDigest(
            name=h["name"],
            unit=h["unit"],
            labels=h["labels"],
            count=h["count"],
            p50=h["p"][0],
            p90=h["p"][1],
            p99=h["p"][2],
            max_slot=h["max_slot"],
            counts=get(h["counts"]),
            scale=_scale_of(h.get("scale")),
        )
        for h in body["histograms"]
    ]
    tables = []
    for t in body["tables"]:
        width = len(t["value_fields"])
        hashes = get(t["hashes"])
        tables.append(
            TableDigest(
                name=t["name"],
                key_fields=[KeyField.model_validate(f) for f in t["key_fields"]],
                value_fields=t["value_fields"],
                comparable=t["comparable"],
                rows=t["rows"],
                truncated=t["truncated"],
                totals=t["totals"],
                top=[(list(k), list(v)) for k, v in t["top"]],
                hashes=hashes,
                values=get(t["values"]).reshape(len(hashes), width),
                aggregations=t.get("aggregations"),
            )
        )
    stacks = [FoldedStacks.model_validate(s) for s in body["stacks"]]
    return RunDigest(
        seq=body["seq"], results=body["results"], histograms=hists, tables=tables, stacks=stacks
    )


def encode_detail(details: Sequence[TableDetail]) -> bytes:
    data = [{"keys": d.keys, "top": d.top} for d in details]
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 1)


def decode_detail(blob: bytes) -> list[TableDetail]:
    data = json.loads(zlib.decompress(blob))
    return [
        TableDetail(
            keys=d["keys"],
            top=[(list(k), list(v)) for k, v in d["top"]],
        )
        for d in data
    ]
