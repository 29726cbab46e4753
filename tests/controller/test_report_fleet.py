"""The vectorized fleet code against plain-Python references, on hand-made and seeded inputs.

group() against set unions, fleet_table() against analysis.project summed in dicts, the
report's fleet tables and one-host keys against the merge semantics (merge_tables over
projected keys, the pre-digest one_host_keys), digest storage round trips, js_rows against
js_divergence. No database, Redis or root. The edge cases at the end were bugs once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from controller.jobs.merge import merge_tables
from controller.jobs.models import JobResults, JobState
from controller.reports import digest as dg
from controller.reports.analysis import comparable_fields, js_divergence, project
from controller.reports.fleet import (
    FleetTable,
    HostInput,
    constant,
    fleet_table,
    group,
    js_rows,
    series_of,
)
from controller.reports.models import JobReport
from controller.reports.outliers import key_text
from controller.reports.service import build_report
from node_agent.protocol import (
    CounterTable,
    FoldedStacks,
    KeyField,
    KeyValue,
    Log2Histogram,
    Result,
    RunState,
    StackCount,
)
from tests.controller.support import host_result

Ints = dg.Ints
Key = tuple[KeyValue, ...]
Rows = list[tuple[list[KeyValue], list[int]]]
SPAN = 2.0


# -- helpers -----------------------------------------------------------------------------------


def _ints(values: Sequence[int]) -> Ints:
    return np.array(sorted(set(values)), dtype=np.int64)


def _table(
    name: str,
    fields: Sequence[str],
    rows: Rows,
    values: Sequence[str] = ("count",),
) -> CounterTable:
    ordered = sorted(rows, key=lambda r: -(r[1][0] if r[1] else 0))
    return CounterTable(
        name=name,
        key_fields=[KeyField(name=f) for f in fields],
        value_fields=list(values),
        rows=ordered,
        total_rows=len(ordered),
    )


def _host(name: str, results: Sequence[Result], seq: int = 0) -> HostInput:
    run, details = dg.digest(seq, results)
    return HostInput(
        host=name,
        run_id=f"run-{name}",
        state=RunState.succeeded,
        reason=None,
        span=SPAN,
        digest=run,
        load_detail=constant(details),
    )


def _results(per_host: dict[str, list[Result]]) -> JobResults:
    hosts = [host_result(h, r, interval_end=SPAN) for h, r in per_host.items()]
    return JobResults(job_id="j1", program="p", state=JobState.succeeded, hosts=hosts, merged=[])


def _report(per_host: dict[str, list[Result]], top: int = 10) -> JobReport:
    spans = {f"run-{h}": SPAN for h in per_host}
    return build_report(_results(per_host), spans=spans, reasons={}, top=top)


def _projected(t: CounterTable) -> CounterTable:
    """The table over its non-pid key fields, rows summed (what the fleet compares)."""
    keep = comparable_fields(t)
    return CounterTable(
        name=t.name,
        key_fields=[t.key_fields[i] for i in keep],
        value_fields=list(t.value_fields),
        rows=[(list(k), v) for k, v in project(t).items()],
    )


def _padded(values: Sequence[int], width: int) -> list[int]:
    return [*values[:width], *[0] * (width - len(values[:width]))]


def _tables_named(per_host: dict[str, list[Result]]) -> dict[str, dict[str, CounterTable]]:
    """Table name -> host -> table, names in order of first appearance."""
    out: dict[str, dict[str, CounterTable]] = {}
    for host, results in per_host.items():
        for r in results:
            if isinstance(r, CounterTable):
                out.setdefault(r.name, {})[host] = r
    return out


# -- references --------------------------------------------------------------------------------


def _ref_group(arrays: Sequence[Ints]) -> list[int]:
    union: set[int] = set()
    for a in arrays:
        union |= {int(x) for x in a}
    return sorted(union)


def _ref_fleet(
    tables: Sequence[tuple[str, CounterTable]], width: int
) -> dict[Key, tuple[list[int], int, str]]:
    """Projected key -> (sums over hosts, how many hosts have it, the last host having it)."""
    out: dict[Key, tuple[list[int], int, str]] = {}
    for host, t in tables:
        for key, values in project(t).items():
            sums, hosts, _ = out.get(key, ([0] * width, 0, host))
            row = _padded(values, width)
            out[key] = ([s + v for s, v in zip(sums, row, strict=True)], hosts + 1, host)
    return out


def _ref_one_host_keys(
    per_host: dict[str, list[Result]], limit: int = 50
) -> list[tuple[str, str, dict[str, KeyValue], list[int]]]:
    """The pre-digest analysis.one_host_keys, table by table."""
    found_all: list[tuple[str, str, dict[str, KeyValue], list[int]]] = []
    for name, tables in _tables_named(per_host).items():
        if len(tables) < 2:
            continue
        projected = {host: project(t) for host, t in tables.items()}
        seen_on: dict[Key, list[str]] = {}
        for host, rows in projected.items():
            for key in rows:
                seen_on.setdefault(key, []).append(host)
        first = next(iter(tables.values()))
        names = [first.key_fields[i].name for i in comparable_fields(first)]
        found = [
            (name, hosts[0], dict(zip(names, key, strict=True)), projected[hosts[0]][key])
            for key, hosts in seen_on.items()
            if len(hosts) == 1
        ]
        found.sort(key=lambda k: (-(k[3][0] if k[3] else 0), k[1], str(k[2])))
        found_all += found[:limit]
    return found_all


def _check_group(arrays: Sequence[Ints]) -> None:
    union, positions = group(arrays)
    assert union.tolist() == _ref_group(arrays)
    assert len(positions) == len(arrays)
    index = {v: i for i, v in enumerate(union.tolist())}
    for a, pos in zip(arrays, positions, strict=True):
        assert len(pos) == len(a)
        assert union[pos].tolist() == a.tolist()
        assert pos.tolist() == [index[int(x)] for x in a]


def _check_fleet_table(hosts: Sequence[HostInput], tables: dict[str, CounterTable]) -> None:
    """fleet_table(hosts, name) against the dict reference; `tables` is host -> its table."""
    name = next(iter(tables.values())).name
    ft = fleet_table(hosts, name)
    assert ft is not None
    width = len(next(iter(tables.values())).value_fields)
    ref = _ref_fleet(list(tables.items()), width)
    assert [m.host for m in ft.members] == list(tables)
    assert ft.hashes.tolist() == sorted(set(ft.hashes.tolist()))
    assert ft.sums.shape == (len(ref), width)
    got: dict[Key, tuple[list[int], int]] = {}
    for i in range(len(ft.hashes)):
        key = tuple(ft.key(i))
        assert dg.key_hash(key) == int(ft.hashes[i])
        got[key] = ([int(v) for v in ft.sums[i]], int(ft.hosts[i]))
        if ft.hosts[i] == 1:
            assert ft.members[int(ft.owner[i])].host == ref[key][2]
    assert got == {k: (sums, n) for k, (sums, n, _) in ref.items()}


def _check_report(per_host: dict[str, list[Result]], top: int = 10) -> JobReport:
    """The report's fleet tables, key metrics and one-host keys against the merge semantics."""
    report = _report(per_host, top=top)
    fleet = {t.name: t for t in report.fleet.tables}
    named = _tables_named(per_host)
    assert list(fleet) == list(named)
    for name, tables in named.items():
        merged = merge_tables([_projected(t) for t in tables.values()])
        ref = {tuple(k): v for k, v in merged.rows}
        got = fleet[name]
        first = next(iter(tables.values()))
        assert got.key_fields == [first.key_fields[i].name for i in comparable_fields(first)]
        assert got.rows == len(ref)
        width = len(first.value_fields)
        totals = [sum(v[i] for v in ref.values()) for i in range(width)]
        assert got.totals == totals
        # The busiest keys: the same first values in the same order (ties in any order), each
        # key named once and with its fleet values.
        assert [k.values[0] for k in got.top] == [v[0] for _, v in merged.rows[:top]]
        assert len({tuple(k.key) for k in got.top}) == len(got.top)
        for k in got.top:
            assert k.values == ref[tuple(k.key)]
        # Each host's metric for each busiest key is its own projected first value per second.
        for host in report.hosts:
            metrics = {m.id: m.value for m in host.metrics}
            mine = project(tables[host.host]) if host.host in tables else None
            if mine is None:
                continue
            for k in got.top:
                text = key_text(got.key_fields, k.key)
                want = mine.get(tuple(k.key), [0])[0] / SPAN
                assert metrics[f"key:{name}:{text}"] == pytest.approx(want)
    ref_alone = _ref_one_host_keys(per_host)
    assert [(k.table, k.host, k.key, k.values) for k in report.one_host_keys] == ref_alone
    return report


def _random_table(
    rng: np.random.Generator,
    name: str,
    fields: Sequence[str],
    pools: Sequence[Sequence[KeyValue]],
    rows: int,
    values: Sequence[str] = ("count",),
    high: int = 5,
) -> CounterTable:
    """Rows with key values drawn from per-field pools (so hosts share keys), small values
    (so there are ties), and raw keys possibly repeated with a pid field set."""
    data: Rows = []
    for _ in range(rows):
        key = [pool[int(rng.integers(len(pool)))] for pool in pools]
        data.append((key, [int(x) for x in rng.integers(1, high, size=len(values))]))
    if len(comparable_fields(_table(name, fields, []))) == len(fields):
        # No pid field: an agent sends each key once.
        once: dict[Key, list[int]] = {}
        for k, v in data:
            once.setdefault(tuple(k), v)
        data = [(list(k), v) for k, v in once.items()]
    return _table(name, fields, data, values)


# -- group() -----------------------------------------------------------------------------------

_BIG = np.iinfo(np.int64)


@pytest.mark.parametrize(
    "arrays",
    [
        pytest.param([_ints([3, 1, 2])] * 5, id="identical"),
        pytest.param([_ints(range(i * 10, i * 10 + 10)) for i in range(4)], id="disjoint"),
        pytest.param([_ints(range(0, 40, 2)), _ints(range(1, 40, 2))], id="interleaved"),
        pytest.param([_ints([5, 9]), _ints([]), _ints([1, 9, 12])], id="one-empty"),
        pytest.param([_ints([]), _ints([4, 7]), _ints([7, 8])], id="first-empty"),
        pytest.param([_ints([]), _ints([]), _ints([2])], id="leading-empties"),
        pytest.param([_ints([]), _ints([])], id="all-empty"),
        pytest.param([], id="no-arrays"),
        pytest.param([_ints([_BIG.min, -1, 0, _BIG.max]), _ints([_BIG.max, 7])], id="extremes"),
        pytest.param([_ints([1])] + [_ints([2, 3])] * 3, id="grows-once-then-same"),
    ],
)
def test_group_hand_made(arrays: list[Ints]) -> None:
    _check_group(arrays)


def test_group_many_arrays_each_adding_keys() -> None:
    # Each array brings as many new keys as the union holds or more: merged in batches.
    arrays = [_ints(range(-(2**i), 2**i, 1 + i % 3)) for i in range(12)]
    arrays += [_ints(range(j * 1000, j * 1000 + 50)) for j in range(60)]
    _check_group(arrays)
    _check_group(arrays[::-1])


@pytest.mark.parametrize("seed", range(6))
def test_group_random_overlap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    common = rng.integers(_BIG.min, _BIG.max, size=300, dtype=np.int64)
    rare = rng.integers(-(10**6), 10**6, size=3000, dtype=np.int64)
    arrays: list[Ints] = []
    for _ in range(200):
        shared = rng.choice(common, size=int(rng.integers(0, 300)), replace=False)
        own = rng.choice(rare, size=int(rng.integers(0, 40)), replace=False)
        arrays.append(_ints([int(x) for x in (*shared, *own)]))
    if seed % 2:
        arrays[0] = _ints([])
    _check_group(arrays)


# -- fleet_table() -----------------------------------------------------------------------------


def test_fleet_table_hand_made_two_value_fields_and_an_empty_host() -> None:
    fields = ("pid", "comm", "path")
    values = ("count", "bytes")
    tables = {
        "a": _table(
            "io",
            fields,
            [([1, "cat", "/x"], [3, 30]), ([2, "cat", "/x"], [2, 20]), ([1, "cat", "/y"], [1, 5])],
            values,
        ),
        "b": _table("io", fields, [([9, "cat", "/x"], [4, 1]), ([9, "sh", "/z"], [7, 70])], values),
        "c": _table("io", fields, [], values),  # has the table, no rows
        "d": _table("io", fields, [([5, "cat", "/y"], [1, 1]), ([6, "1", 1], [2, 2])], values),
        "e": _table("io", fields, [([5, "cat", "/y"], [8, 8]), ([6, "1", "1"], [3, 3])], values),
    }
    other = _table("other", ("k",), [(["v"], [1])])
    hosts = [_host(h, [t, other] if h == "b" else [t]) for h, t in tables.items()]
    hosts.append(_host("f", [other]))  # no such table
    _check_fleet_table(hosts, tables)
    ft = fleet_table(hosts, "io")
    assert ft is not None
    named = {tuple(ft.key(i)): [int(v) for v in ft.sums[i]] for i in range(len(ft.hashes))}
    assert named[("cat", "/x")] == [9, 51]
    assert named[("cat", "/y")] == [10, 14]
    assert (named[("1", 1)], named[("1", "1")]) == ([2, 2], [3, 3])  # str and int stay apart
    assert fleet_table(hosts, "nope") is None


def test_fleet_table_pid_only_and_no_pid_tables() -> None:
    pid_only = {
        h: _table("t", ("tgid",), [([i], [i + 1]), ([i + 9], [1])]) for i, h in enumerate("abc")
    }
    _check_fleet_table([_host(h, [t]) for h, t in pid_only.items()], pid_only)
    no_pid = {
        "a": _table("t", ("comm",), [(["x"], [1]), (["y"], [2])]),
        "b": _table("t", ("comm",), [(["y"], [5])]),
    }
    _check_fleet_table([_host(h, [t]) for h, t in no_pid.items()], no_pid)


def test_digest_sums_repeated_raw_keys() -> None:
    # An agent sending one key twice (no pid field to project away): summed, not overwritten.
    t = _table("t", ("comm",), [(["x"], [1, 2]), (["x"], [3, 4]), (["y"], [5, 6])], ("a", "b"))
    _check_fleet_table([_host("a", [t])], {"a": t})


@pytest.mark.parametrize("seed", range(4))
def test_fleet_table_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    comms: list[KeyValue] = [f"c{i}" for i in range(6)]
    paths: list[KeyValue] = [f"/p{i}" for i in range(40)] + list(range(10))
    pids: list[KeyValue] = list(range(1, 20))
    tables: dict[str, CounterTable] = {}
    for h in range(25):
        rows = 0 if h == 3 else int(rng.integers(1, 60))
        tables[f"h{h:02d}"] = _random_table(
            rng,
            "opens",
            ("tgid", "comm", "parent_pid", "path"),
            [pids, comms, pids, paths],
            rows,
            ("count", "bytes"),
            high=1000,
        )
    hosts = [_host(h, [t]) for h, t in tables.items()]
    _check_fleet_table(hosts, tables)


# -- build_report() ----------------------------------------------------------------------------


def test_report_fleet_tables_and_one_host_keys_hand_made() -> None:
    fields = ("pid", "comm", "path")
    per_host: dict[str, list[Result]] = {
        "a": [_table("opens", fields, [([1, "cat", "/x"], [3]), ([2, "cat", "/x"], [2])])],
        "b": [
            _table("opens", fields, [([9, "cat", "/x"], [4]), ([9, "sh", "/b"], [7])]),
            _table("sys", ("syscall",), [(["read"], [10, 1]), (["open"], [2, 2])], ("n", "e")),
        ],
        "c": [_table("opens", fields, [])],
        "d": [_table("sys", ("syscall",), [(["read"], [1, 0]), (["mmap"], [5, 0])], ("n", "e"))],
    }
    report = _check_report(per_host)
    assert [(k.host, k.key) for k in report.one_host_keys] == [
        ("b", {"comm": "sh", "path": "/b"}),
        ("d", {"syscall": "mmap"}),
        ("b", {"syscall": "open"}),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_report_random_against_the_merge(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    comms: list[KeyValue] = [f"c{i}" for i in range(4)]
    paths: list[KeyValue] = [f"/p{i}" for i in range(30)]
    names: list[KeyValue] = [f"sys{i}" for i in range(200)]
    per_host: dict[str, list[Result]] = {}
    for h in range(12):
        results: list[Result] = []
        if h != 5:
            results.append(
                _random_table(
                    rng,
                    "opens",
                    ("pid", "comm", "path"),
                    [list(range(1, 9)), comms, paths],
                    0 if h == 2 else int(rng.integers(5, 40)),
                    ("count", "bytes"),
                )
            )
        # Many keys on one host only (more than the 50 kept), values with ties at the cut.
        results.append(
            _random_table(rng, "syscalls", ("syscall",), [names], int(rng.integers(10, 30)))
        )
        results.append(Log2Histogram(name="lat", unit="usec", buckets=[(h % 4 + 1, 10)]))
        per_host[f"h{h:02d}"] = results
    report = _check_report(per_host, top=10 + seed)
    assert len(report.one_host_keys) > 0


def test_report_with_zero_value_fields() -> None:
    per_host: dict[str, list[Result]] = {
        "a": [_table("seen", ("pid", "comm"), [([1, "x"], []), ([2, "y"], [])], ())],
        "b": [_table("seen", ("pid", "comm"), [([3, "x"], [])], ())],
    }
    report = _report(per_host)
    table = report.fleet.tables[0]
    assert (table.totals, table.rows) == ([], 2)
    assert sorted((k.key, k.values) for k in table.top) == [(["x"], []), (["y"], [])]
    assert [(k.host, k.key, k.values) for k in report.one_host_keys] == [("a", {"comm": "y"}, [])]


def test_a_run_whose_latest_snapshot_has_no_results_has_no_data() -> None:
    results = _results({"a": [_table("t", ("k",), [(["x"], [1])])], "b": []})
    results.hosts[1].state = RunState.failed
    report = build_report(results, spans={}, reasons={"run-b": "boom"})
    assert [h.host for h in report.hosts] == ["a"]
    assert [(m.host, m.has_data, m.reason) for m in report.missing] == [("b", False, "boom")]
    assert report.one_host_keys == []


# -- digest storage ----------------------------------------------------------------------------


def _stored(run: dg.RunDigest) -> dg.RunDigest:
    """Through encode, a JSON column and a bytes column, and back."""
    body, blob = dg.encode(run)
    return dg.decode(json.loads(json.dumps(body)), bytes(blob))


def _assert_same(a: dg.RunDigest, b: dg.RunDigest) -> None:
    assert (a.seq, a.results) == (b.seq, b.results)
    assert len(a.histograms) == len(b.histograms)
    for x, y in zip(a.histograms, b.histograms, strict=True):
        assert (x.name, x.unit, x.labels, x.count) == (y.name, y.unit, y.labels, y.count)
        assert (x.p50, x.p90, x.p99, x.max_slot) == (y.p50, y.p90, y.p99, y.max_slot)
        assert y.counts.dtype == np.int64 and y.counts.tolist() == x.counts.tolist()
    assert len(a.tables) == len(b.tables)
    for s, t in zip(a.tables, b.tables, strict=True):
        assert (s.name, s.key_fields, s.value_fields, s.comparable) == (
            t.name,
            t.key_fields,
            t.value_fields,
            t.comparable,
        )
        assert (s.rows, s.truncated, s.totals, s.top) == (t.rows, t.truncated, t.totals, t.top)
        assert t.hashes.dtype == np.int64 and t.hashes.tolist() == s.hashes.tolist()
        assert t.values.shape == s.values.shape == (len(s.hashes), len(s.value_fields))
        assert t.values.tolist() == s.values.tolist()
    assert a.stacks == b.stacks


def test_digest_round_trip_with_no_rows() -> None:
    results: list[Result] = [
        _table("t", ("pid", "comm"), []),
        Log2Histogram(name="h", unit="usec", buckets=[]),
    ]
    run, details = dg.digest(3, results)
    back = _stored(run)
    _assert_same(run, back)
    assert back.tables[0].values.shape == (0, 1) and back.tables[0].totals == [0]
    assert back.histograms[0].buckets() == [] and back.histograms[0].p50 is None
    assert dg.decode_detail(dg.encode_detail(details))[0].keys == []
    _assert_same(dg.digest(7, [])[0], _stored(dg.digest(7, [])[0]))


def test_digest_round_trip_with_two_value_fields_and_none() -> None:
    two = _table(
        "io",
        ("tgid", "dev", "op"),
        [([1, "sda", "r"], [5, 4096]), ([2, "sda", "r"], [1, 512]), ([1, "sdb", 7], [2, 0])],
        ("count", "bytes"),
    )
    none = _table("seen", ("comm",), [(["x"], []), (["y"], [])], ())
    run, details = dg.digest(1, [two, none])
    back = _stored(run)
    _assert_same(run, back)
    assert back.tables[0].totals == [8, 4608] and back.tables[1].values.shape == (2, 0)
    detail = dg.decode_detail(dg.encode_detail(details))
    named = {
        tuple(detail[0].key(i)): back.tables[0].values[i].tolist()
        for i in range(len(back.tables[0].hashes))
    }
    assert named == {("sda", "r"): [6, 4608], ("sdb", 7): [2, 0]}
    assert [d.top for d in detail] == [d.top for d in details]


def test_digest_round_trip_with_labels_and_stacks() -> None:
    results: list[Result] = [
        Log2Histogram(name="lat", unit="usec", labels={"cpu": 3, "dev": "sda"}, buckets=[(2, 1)]),
        Log2Histogram(name="lat", unit="usec", labels={"cpu": "3"}, buckets=[(0, 4), (9, 2)]),
        FoldedStacks(
            name="cpu",
            stacks=[StackCount(frames=["main", "f"], count=3), StackCount(frames=["g"], count=1)],
            total_rows=2,
            truncated=True,
        ),
        FoldedStacks(name="off", unit="usec"),
    ]
    run, _ = dg.digest(2, results)
    back = _stored(run)
    _assert_same(run, back)
    assert [h.labels for h in back.histograms] == [{"cpu": 3, "dev": "sda"}, {"cpu": "3"}]
    assert back.histograms[1].buckets() == [(0, 4), (9, 2)]
    assert back.stacks[0].folded() == results[2].folded()  # type: ignore[union-attr]
    hosts = [_host("a", results), _host("b", results[:1])]
    hosts[0].digest, hosts[1].digest = back, _stored(hosts[1].digest)  # type: ignore[arg-type]
    assert [(s.name, s.labels, s.hosts) for s in series_of(hosts)] == [
        ("lat", {"cpu": 3, "dev": "sda"}, ["a", "b"]),
        ("lat", {"cpu": "3"}, ["a"]),
    ]


# -- js_rows() ---------------------------------------------------------------------------------


def _buckets(row: Ints) -> list[tuple[int, int]]:
    return [(int(s), int(row[s])) for s in np.flatnonzero(row)]


@pytest.mark.parametrize("seed", range(5))
def test_js_rows_matches_js_divergence(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hosts, slots = 40, 64
    matrix = rng.integers(0, 50, size=(hosts, slots), dtype=np.int64)
    matrix[rng.random((hosts, slots)) < 0.8] = 0  # sparse rows
    matrix[::7] = 0  # empty hosts
    matrix[1] = 0
    matrix[1, 5] = 10**9  # one huge bucket
    fleets = [matrix.sum(axis=0), rng.integers(0, 3, size=slots, dtype=np.int64)]
    fleets.append(np.zeros(slots, dtype=np.int64))
    for fleet in fleets:
        got = js_rows(matrix, fleet)
        want = [js_divergence(_buckets(row), _buckets(fleet)) for row in matrix]
        assert got.shape == (hosts,)
        assert got.tolist() == pytest.approx(want, abs=1e-12)
        assert bool((got >= 0).all()) and bool((got <= 1 + 1e-12).all())


def test_series_js_is_each_hosts_divergence_from_the_fleet() -> None:
    rng = np.random.default_rng(7)
    per: dict[str, list[tuple[int, int]]] = {}
    for h in range(9):
        slots = sorted({int(s) for s in rng.integers(0, 20, size=int(rng.integers(0, 6)))})
        per[f"h{h}"] = [(s, int(rng.integers(1, 100))) for s in slots]
    hosts = [_host(h, [Log2Histogram(name="x", unit="us", buckets=b)]) for h, b in per.items()]
    (series,) = series_of(hosts)
    fleet: dict[int, int] = {}
    for b in per.values():
        for s, c in b:
            fleet[s] = fleet.get(s, 0) + c
    assert dg.sparse(series.fleet) == sorted(fleet.items())
    want = [js_divergence(b, list(fleet.items())) for b in per.values()]
    assert series.js.tolist() == pytest.approx(want, abs=1e-12)


# -- edge cases (bugs once) ---------------------------------------------------------------


def test_digest_of_a_u64_counter_value() -> None:
    t = _table("t", ("k",), [(["x"], [2**64 - 1]), (["y"], [1])])
    run, _ = dg.digest(0, [t])
    assert run.tables[0].totals == [2**64]


def test_fleet_sums_past_int64_do_not_wrap() -> None:
    big = 2**62
    report = _report({h: [_table("t", ("k",), [(["x"], [big])])] for h in "ab"})
    assert report.fleet.tables[0].totals[0] >= 2**63 - 1


def test_a_table_whose_first_host_has_no_key_fields() -> None:
    per_host: dict[str, list[Result]] = {
        "a": [CounterTable(name="m", key_fields=[])],  # the custom decoder's empty map
        "b": [_table("m", ("key",), [(["x"], [5])])],
    }
    report = _report(per_host)
    assert report.fleet.tables[0].top[0].key == ["x"]
    assert [(k.host, k.key) for k in report.one_host_keys] == [("b", {"key": "x"})]


def test_a_host_with_two_tables_of_one_name() -> None:
    one = _table("t", ("k",), [(["x"], [5])])
    two = _table("t", ("k",), [(["y"], [7]), (["z"], [1])])
    report = _report({"a": [one, two], "b": [one]})
    assert {tuple(k.key) for k in report.fleet.tables[0].top} == {("x",), ("y",), ("z",)}


def test_key_names_from_a_newer_detail_are_checked() -> None:
    old = _table("t", ("k",), [(["a"], [1]), (["b"], [2]), (["c"], [3])])
    new = _table("t", ("k",), [(["a"], [1]), (["d"], [2]), (["e"], [3]), (["f"], [4])])
    run, _ = dg.digest(1, [old])
    _, newer = dg.digest(2, [new])
    host = HostInput(
        host="h",
        run_id="r",
        state=RunState.running,
        reason=None,
        span=None,
        digest=run,
        load_detail=constant(newer),  # the row was replaced between the two reads
    )
    ft: FleetTable | None = fleet_table([host], "t")
    assert ft is not None
    for i in range(len(ft.hashes)):
        key = ft.key(i)
        if str(key[0]).startswith("#"):
            continue  # unnamed (by its hash) is fine; a wrong name is not
        assert dg.key_hash(tuple(key)) == int(ft.hashes[i]), f"key #{i} named {key}"
