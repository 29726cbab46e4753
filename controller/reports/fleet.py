"""The fleet side of a report, from run digests: hosts x buckets, keys grouped over hosts.

Histograms of one series become a matrix (a row per host) so the fleet merge and each host's
Jensen-Shannon divergence from it are a few array operations. Counter tables are grouped by
their projected keys' hashes: the union of the hosts' sorted hash arrays, then per key the
sum over hosts, how many hosts have it and (for keys on one host) which one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controller.jobs.models import JobState
from controller.reports.digest import I64_MAX, Ints, RunDigest, TableDetail, TableDigest, key_hash
from node_agent.kinds.counter_table import Aggregation
from node_agent.kinds.histogram import LabelSet, Scale
from node_agent.protocol import KeyValue, RunState, SnapshotStats

log = logging.getLogger(__name__)
Floats = npt.NDArray[np.float64]


def constant(details: list[TableDetail]) -> Callable[[], list[TableDetail]]:
    return lambda: details


@dataclass
class HostInput:
    host: str
    run_id: str
    state: RunState
    reason: str | None
    span: float | None
    digest: RunDigest | None
    load_detail: Callable[[], list[TableDetail]] = field(repr=False, default=list)
    stats: SnapshotStats | None = None  # the last snapshot's: what the trace cost the host
    _detail: list[TableDetail] | None = field(default=None, repr=False)

    @property
    def has_data(self) -> bool:
        return self.digest is not None and self.digest.results > 0

    def detail(self, index: int) -> TableDetail | None:
        """The detail of this host's `index`-th table (loaded on first use)."""
        if self._detail is None:
            self._detail = self.load_detail()
        return self._detail[index] if index < len(self._detail) else None


@dataclass
class ReportInput:
    job_id: str
    program: str
    state: JobState
    hosts: list[HostInput]


@dataclass
class Series:
    """One histogram series over the hosts that have it."""

    name: str
    unit: str
    labels: dict[str, KeyValue]
    hosts: list[str]
    scale: Scale  # what each slot holds (one per series: other bounds are another series)
    matrix: Ints  # (hosts, slots)
    fleet: Ints  # (slots,)
    js: Floats  # each host's divergence from the fleet


def js_rows(matrix: Ints, fleet: Ints) -> Floats:
    """Jensen-Shannon divergence (bits) of each row's distribution from the fleet's; 0 where
    either is empty. The same numbers as analysis.js_divergence, for many hosts at once."""
    totals = matrix.sum(axis=1).astype(np.float64)
    total = float(fleet.sum())
    if total == 0:
        return np.zeros(len(matrix))
    q = fleet / total
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(totals[:, None] > 0, matrix / totals[:, None], 0.0)
        m = (p + q) / 2
        kp = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kq = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    out: Floats = np.maximum(0.0, (kp + kq) / 2)
    out[totals == 0] = 0.0
    return out


def series_of(hosts: Sequence[HostInput]) -> list[Series]:
    """Every histogram series in order of first appearance, stacked over the hosts."""
    found: dict[tuple[str, LabelSet, Scale], list[tuple[str, Ints]]] = {}
    meta: dict[tuple[str, LabelSet, Scale], tuple[str, str, dict[str, KeyValue]]] = {}
    for host in hosts:
        assert host.digest is not None
        for h in host.digest.histograms:
            key = (h.name, tuple(sorted(h.labels.items())), h.scale)
            found.setdefault(key, []).append((host.host, h.counts))
            meta.setdefault(key, (h.name, h.unit, dict(h.labels)))
    out: list[Series] = []
    for key, rows in found.items():
        width = max((len(c) for _, c in rows), default=0)
        matrix = np.zeros((len(rows), width), dtype=np.int64)
        for i, (_, counts) in enumerate(rows):
            matrix[i, : len(counts)] = counts
        fleet = matrix.sum(axis=0)
        name, unit, labels = meta[key]
        out.append(
            Series(
                name=name,
                unit=unit,
                labels=labels,
                scale=key[2],
                hosts=[h for h, _ in rows],
                matrix=matrix,
                fleet=fleet,
                js=js_rows(matrix, fleet),
            )
        )
    return out


@dataclass
class FleetTable:
    """One counter table summed over hosts by its projected (non-pid) key."""

    name: str
    comparable: list[str]
    value_fields: list[str]
    truncated: bool
    members: list[HostInput]  # the hosts that report this table
    tables: list[TableDigest]  # theirs, aligned with members
    indexes: list[int]  # where each is in its host's digest
    hashes: Ints  # the union, sorted
    sums: Ints  # (keys, value fields): summed, or min/max/mean as `aggregations` says
    hosts: Ints  # how many members have each key
    owner: Ints  # index into members of the (last) member having each key
    aggregations: list[Aggregation] | None = None

    def order(self) -> Ints:
        """Key indexes, largest first value first (ties by hash, so stable across calls)."""
        first = self.sums[:, 0] if self.sums.shape[1] else np.zeros(len(self.hashes), np.int64)
        if first.dtype == object:  # sums past int64 (see fleet_table): ranked as floats
            first = first.astype(np.float64)
        ordered: Ints = np.lexsort((self.hashes, -first))
        return ordered

    def key(self, index: int) -> list[KeyValue]:
        """The projected key of one union entry, read from a member's detail (and checked
        against its hash: a detail rewritten since the digest was read names nothing)."""
        h = int(self.hashes[index])
        candidates = [int(self.owner[index]), *range(len(self.members))]
        for m in candidates:
            table = self.tables[m]
            pos = int(np.searchsorted(table.hashes, h))
            if pos < len(table.hashes) and int(table.hashes[pos]) == h:
                detail: TableDetail | None = self.members[m].detail(self.indexes[m])
                if detail is not None and pos < len(detail.keys):
                    key = detail.key(pos)
                    if key_hash(tuple(key)) == h:
                        return key
        log.warning("table %s: no host names the key with hash %016x", self.name, h % 2**64)
        return [f"#{h % 2**64:016x}", *([""] * (len(self.comparable) - 1))]


def group(arrays: Sequence[Ints]) -> tuple[Ints, list[Ints]]:
    """The sorted union of many sorted, unique arrays, and each array's positions in it.

    Hosts mostly share their keys, so the union stops growing early: positions found while
    building it stay valid for every array checked after its last growth, and only the
    arrays before it are searched again."""
    union: Ints = np.unique(arrays[0]) if arrays else np.zeros(0, dtype=np.int64)
    version = 0
    found: list[tuple[int, Ints] | None] = []
    pending: list[Ints] = []
    pending_size = 0
    for a in arrays:
        if len(union) == 0:
            union, version = np.unique(a), version + 1
            found.append(None)
            continue
        pos = np.searchsorted(union, a)
        pos[pos >= len(union)] = 0
        hit = union[pos] == a
        if bool(hit.all()):
            found.append((version, pos))
            continue
        found.append(None)
        pending.append(a[~hit])
        pending_size += len(pending[-1])
        if pending_size > len(union):  # merge in batches: no quadratic growth
            union, version = np.union1d(union, np.concatenate(pending)), version + 1
            pending, pending_size = [], 0
    if pending:
        union, version = np.union1d(union, np.concatenate(pending)), version + 1
    positions = [
        f[1] if f is not None and f[0] == version else np.searchsorted(union, a)
        for a, f in zip(arrays, found, strict=True)
    ]
    return union, positions


def fleet_table(members: Sequence[HostInput], name: str) -> FleetTable | None:
    found = [
        (m, t, i)
        for m in members
        if m.digest is not None
        for i, t in enumerate(m.digest.tables)
        if t.name == name
    ]
    if not found:
        return None
    # The fields come from a host that has rows (an empty custom map may have no key fields);
    # a host whose table has other key fields is left out of the fleet's rather than mixed in.
    first = next((t for _, t, _ in found if len(t.hashes)), found[0][1])
    have = [x for x in found if x[1].comparable == first.comparable or not len(x[1].hashes)]
    if len(have) < len(found):
        odd = sorted({m.host for m, t, _ in found if t.comparable != first.comparable})
        log.warning("table %s: hosts %s have other key fields; left out of the fleet", name, odd)
    width = len(first.value_fields)
    union, positions = group([t.hashes for _, t, _ in have])
    # int64 unless the sums could overflow it; then Python ints (exact, slower).
    exact = sum(int(np.abs(t.values).max(initial=0)) for _, t, _ in have) <= I64_MAX
    sums = np.zeros((len(union), width), dtype=np.int64 if exact else object)
    hosts = np.zeros(len(union), dtype=np.int64)
    owner = np.zeros(len(union), dtype=np.int64)
    for n, ((_, t, _), ids) in enumerate(zip(have, positions, strict=True)):
        # A host's hashes are unique, so `ids` has no repeats and += adds each once.
        cols = min(width, t.values.shape[1] if t.values.ndim == 2 else 0)
        part = t.values[:, :cols]
        sums[ids, :cols] += part if exact else part.astype(object)
        hosts[ids] += 1
        owner[ids] = n
    _combine_columns(sums, hosts, have, positions, first)
    return FleetTable(
        name=name,
        comparable=list(first.comparable),
        value_fields=list(first.value_fields),
        truncated=any(t.truncated for _, t, _ in have),
        members=[m for m, _, _ in have],
        tables=[t for _, t, _ in have],
        indexes=[i for _, _, i in have],
        hashes=union,
        sums=sums,
        hosts=hosts,
        owner=owner,
        aggregations=first.aggregations,
    )


def _combine_columns(
    sums: Ints,
    hosts: Ints,
    have: Sequence[tuple[HostInput, TableDigest, int]],
    positions: Sequence[Ints],
    first: TableDigest,
) -> None:
    """Columns that are no sums (bpftrace's min/max/avg) redone in place: the hosts' min or
    max, and a mean as total / count where the table has both, else the hosts' mean."""
    how = first.aggregations or []
    fields = first.value_fields
    for i, aggregation in enumerate(how[: sums.shape[1]]):
        if aggregation in ("min", "max"):
            pick = np.minimum if aggregation == "min" else np.maximum
            column = np.full(len(sums), None, dtype=object)
            for (_, t, _), ids in zip(have, positions, strict=True):
                if t.values.ndim == 2 and i < t.values.shape[1]:
                    for at, v in zip(ids.tolist(), t.values[:, i].tolist(), strict=True):
                        column[at] = v if column[at] is None else pick(column[at], v)
            sums[:, i] = [0 if v is None else v for v in column]
        elif aggregation == "mean":
            if "count" in fields and "total" in fields:
                count, total = sums[:, fields.index("count")], sums[:, fields.index("total")]
            else:
                count, total = hosts, sums[:, i]
            sums[:, i] = [
                0 if c <= 0 else (abs(int(t)) // int(c)) * (1 if t >= 0 else -1)
                for t, c in zip(total.tolist(), count.tolist(), strict=True)
            ]


def values_on(table: TableDigest, hashes: Ints) -> Ints:
    """A host's projected values for the given key hashes (zeros where it has none)."""
    width = table.values.shape[1] if table.values.ndim == 2 else 0
    out = np.zeros((len(hashes), width), dtype=np.int64)
    if len(table.hashes) == 0 or len(hashes) == 0:
        return out
    pos = np.searchsorted(table.hashes, hashes)
    pos[pos >= len(table.hashes)] = 0
    hit = table.hashes[pos] == hashes
    out[hit] = table.values[pos[hit]]
    return out


def table_names(hosts: Sequence[HostInput]) -> list[str]:
    names: dict[str, None] = {}
    for h in hosts:
        if h.digest is not None:
            for t in h.digest.tables:
                names.setdefault(t.name, None)
    return list(names)
