"""bpftrace's -f json output into result kinds: recorded bpftrace 0.17 output (tests/node_agent/
bpftrace/recorded/, each .jsonl printed by the .bt beside it) for the logic, hostile prints
that must never raise, and the key split. test_output_real.py runs real bpftrace."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from node_agent.bpftrace.keys import KeyNames, fits, parse_keys, split_key
from node_agent.bpftrace.output import SKIPPED, Maps
from node_agent.errors import BadParameter
from node_agent.kinds import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    LinearHistogram,
    Log2Histogram,
    Result,
)
from node_agent.protocol import Limits

RECORDED = Path(__file__).parent / "recorded"
RESULTS = TypeAdapter(list[Result])
EVERY_MAP = {
    "@c": "count",
    "@": "count",
    "@s": "sum",
    "@mn": "min",
    "@mx": "max",
    "@a": "avg",
    "@stat": "stats",
    "@h": "hist",
    "@hk": "hist",
    "@l": "lhist",
    "@lk": "lhist",
    "@st": "count",
    "@stc": "count",
    "@us": "count",
    "@name": "value",
    "@z": "hist",
    "@neg": "hist",
    "@negl": "lhist",
    "@one": "hist",
    "@v": "value",
}
EVERY_LHIST = {"@l": (0, 50, 10), "@lk": (0, 50, 10), "@negl": (0, 10, 2)}


def recorded(name: str) -> list[dict[str, Any]]:
    lines = (RECORDED / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def read(
    messages: list[Any],
    functions: dict[str, str] | None = None,
    *,
    keys: str = "",
    limits: Limits | None = None,
    **kwargs: Any,
) -> dict[str, Result]:
    maps = Maps(
        limits=limits or Limits(),
        functions=functions or {},
        keys=parse_keys(keys),
        **kwargs,
    )
    for message in messages:
        maps.take(message)
    results = maps.results()
    RESULTS.validate_python([r.model_dump() for r in results])  # what goes on the wire
    return {_title(r): r for r in results}


def _title(result: Result) -> str:
    labels = getattr(result, "labels", {})
    return result.name + ("" if not labels else repr(sorted(labels.items())))


def table(results: dict[str, Result], name: str) -> CounterTable:
    found = results[name]
    assert isinstance(found, CounterTable)
    return found


def test_every_map_kind_of_a_real_run() -> None:
    got = read(recorded("every_map"), EVERY_MAP, lhist=EVERY_LHIST)
    assert table(got, "@c").rows == [([], [246])]
    by_comm = table(got, "@")
    assert [k.name for k in by_comm.key_fields] == ["key0"]
    assert by_comm.rows == [(["bash"], [240]), (["python3"], [5]), (["sh"], [1])]
    assert table(got, "@s").rows == [([], [7460077])]
    assert (table(got, "@mn").value_fields, table(got, "@mn").aggregations) == (["min"], ["min"])
    assert table(got, "@mx").rows == [([], [30433])]
    avg = table(got, "@a")
    assert [(f.name, f.type) for f in avg.key_fields] == [("key0", "str"), ("key1", "int")]
    assert (["python3", 30220], [30220]) in avg.rows
    assert avg.aggregations == ["mean"]
    stat = table(got, "@stat")
    assert stat.value_fields == ["count", "average", "total"]
    assert stat.aggregations == ["sum", "mean", "sum"]
    assert stat.rows == [([], [246, 30325, 7460077])]


def test_histograms_of_a_real_run() -> None:
    got = read(recorded("every_map"), EVERY_MAP, lhist=EVERY_LHIST)
    h = got["@h"]
    assert isinstance(h, Log2Histogram)
    assert h.buckets == [(15, 246)]  # [16384, 32767]
    assert h.scale.bounds(15) == (16384, 32767)
    keyed = got["@hk[('key0', 'python3')]"]
    assert isinstance(keyed, Log2Histogram) and keyed.buckets == [(15, 5)]
    zero, one = got["@z[('key0', 'bash')]"], got["@one"]
    assert isinstance(zero, Log2Histogram) and zero.buckets == [(0, 240)]
    assert isinstance(one, Log2Histogram) and one.buckets == [(1, 246)]
    negative = got["@neg"]
    assert isinstance(negative, Log2Histogram) and negative.buckets == []
    assert table(got, "@neg.negative").rows == [([], [246])]
    linear = got["@l"]
    assert isinstance(linear, LinearHistogram)
    assert (linear.min, linear.max, linear.step) == (0, 50, 10)
    assert linear.buckets == [(1, 15), (2, 28), (3, 40), (4, 42), (5, 9), (6, 112)]
    python = got["@lk[('key0', 'python3')]"]
    assert isinstance(python, LinearHistogram) and python.buckets == [(2, 1), (3, 1), (6, 3)]
    under = got["@negl"]
    assert isinstance(under, LinearHistogram) and under.buckets == [(0, 246)]


def test_stack_maps_fold_root_first_with_other_key_fields_as_the_root() -> None:
    got = read(recorded("every_map"), EVERY_MAP)
    alone, with_comm = got["@st"], got["@stc"]
    assert isinstance(alone, FoldedStacks) and isinstance(with_comm, FoldedStacks)
    assert alone.stacks[0].frames == [
        "entry_SYSCALL_64_after_hwframe+118",
        "do_syscall_64+527",
        "syscall_trace_enter+384",
        "perf_syscall_enter+475",
    ]
    assert alone.stacks[0].count == 246
    assert [(s.frames[0], s.count) for s in with_comm.stacks] == [
        ("bash", 240),
        ("python3", 5),
        ("sh", 1),
    ]
    assert with_comm.stacks[0].frames[1:] == alone.stacks[0].frames
    user = got["@us"]
    assert isinstance(user, FoldedStacks) and sum(s.count for s in user.stacks) == 3


def test_values_and_printf_are_bounded_samples() -> None:
    got = read(recorded("every_map"), EVERY_MAP, limits=Limits(max_samples=2))
    names = got["@name"]
    assert isinstance(names, EventSamples)
    assert names.fields == ["key0", "value"]
    assert (names.seen, names.dropped, len(names.events)) == (3, 1, 2)
    printf = got["printf"]
    assert isinstance(printf, EventSamples) and printf.fields == ["time", "text"]
    # three printf lines and one print(5); the most recent two kept
    assert (printf.seen, printf.dropped) == (4, 2)
    assert [e[1] for e in printf.events] == ["hi bash", "5"]


def test_signed_values_string_values_and_a_comma_in_a_key() -> None:
    functions = {"@av": "avg", "@neg": "sum", "@mn": "min", "@big": "sum", "@ks": "count"}
    functions |= {"@m": "count", "@ss": "stats", "@str": "count", "@sv": "value", "@t": "value"}
    got = read(recorded("values"), functions, lhist={"@l": (0, 25, 10)})
    assert table(got, "@av").rows == [([], [-5])]
    assert table(got, "@neg").rows == [([], [-3])]
    assert table(got, "@mn").rows == [([], [-7])]
    assert table(got, "@big").rows == [([], [1])]  # 2 * (2**63 - 1) + 3 wraps in bpftrace
    # "a,b,3" is ("a,b", 3): the other key says the last field is an int
    assert sorted(table(got, "@ks").rows) == [(["a,b", 3], [1]), (["c", 4], [1])]
    assert table(got, "@m").rows == [([-3], [1])]
    assert table(got, "@ss").rows == [(["bpftrace"], [1, 7, 7])]
    assert table(got, "@str").rows == [(['a"b\\n\\c'], [1])]  # the newline made visible
    sv, tuple_value = got["@sv"], got["@t"]
    assert isinstance(sv, EventSamples) and sv.events == [["hello"]]
    assert isinstance(tuple_value, EventSamples) and tuple_value.events == [[1, 2, '[1, "x"]']]


def test_bpftrace_017_top_log2_bucket_is_an_overflow_count() -> None:
    got = read(recorded("hist_top"), {"@h": "hist"})
    exponents = (31, 32, 33, 40, 62, 63)
    for exponent in exponents:  # 2**31 and 2**62 share one open bucket: no slot can say which
        hist = got[f"@h[('key0', {exponent})]"]
        assert isinstance(hist, Log2Histogram) and hist.buckets == []
    overflow = table(got, "@h.overflow")
    assert sorted(overflow.rows) == [([e], [1]) for e in exponents]
    assert table(got, "@h.negative").rows == [([64], [1])]  # 0xffffffffffffffff is -1
    for value in (2, 3, 4, 30):
        hist = got[f"@h[('key0', {value})]"]
        assert isinstance(hist, Log2Histogram)
        low, high = hist.scale.bounds(hist.buckets[0][0])
        assert low is not None and high is not None
        assert low <= (1 << value if value == 30 else value) <= high


def test_lhist_whose_range_is_not_a_multiple_of_its_step() -> None:
    # lhist(v, 0, 25, 10): bpftrace keeps 2 buckets and counts 20..24 as overflow, printed
    # as "[25, ...)"; the histogram says what the slots hold: max 20.
    got = read(
        recorded("lhist_edges"),
        {"@a": "lhist", "@b": "lhist", "@x": "count"},
        lhist={"@a": (0, 25, 10), "@b": (5, 8, 1)},
    )
    a, b = got["@a"], got["@b"]
    assert isinstance(a, LinearHistogram) and (a.min, a.max, a.step) == (0, 20, 10)
    assert a.buckets == [(3, 3)]
    assert isinstance(b, LinearHistogram) and b.buckets == [(0, 1)]
    assert table(got, "@x").rows == [([], [0])]


def test_lhist_range_inferred_from_buckets_without_the_script() -> None:
    got = read(recorded("every_map"), {})
    linear = got["@l"]
    assert isinstance(linear, LinearHistogram)
    assert (linear.min, linear.max, linear.step) == (0, 50, 10)


def test_lost_events_add_up() -> None:
    maps = Maps(limits=Limits(), functions={}, keys=KeyNames())
    assert [maps.take(m) for m in recorded("lost")] == [False, True, True, True, True, True, True]
    assert maps.lost == 1185 + 2 + 5


def test_a_later_print_replaces_the_earlier_and_reset_forgets() -> None:
    maps = Maps(limits=Limits(), functions={"@": "count"}, keys=KeyNames())
    maps.take({"type": "map", "data": {"@": {"a": 1, "b": 2}}})
    maps.take({"type": "map", "data": {"@": {"a": 5}}})
    (only,) = maps.results()
    assert isinstance(only, CounterTable) and only.rows == [(["a"], [5])]
    maps.reset()
    assert maps.results() == []


def test_a_negative_sum_printed_as_u64_reads_negative_and_ignored_output_is_counted() -> None:
    """bpftrace 0.17 prints `@x -= 3` (first write) as 2**64 - 3; only sums are read back."""
    maps = Maps(limits=Limits(), functions={"@x": "sum", "@c": "count"}, keys=KeyNames())
    maps.take({"type": "map", "data": {"@x": 2**64 - 3, "@c": 2**64 - 3}})
    maps.ignore("stdout line above 10 characters")
    results = maps.results()
    RESULTS.validate_python([r.model_dump() for r in results])  # what goes on the wire
    got = {_title(r): r for r in results}
    assert table(got, "@x").rows == [([], [-3])]
    assert table(got, "@c").rows == [([], [2**64 - 3])]
    skipped = table(got, SKIPPED)
    assert (["", "stdout line above 10 characters"], [1]) in skipped.rows


def test_rows_are_bounded_keeping_the_largest() -> None:
    data = {f"k{i}": i for i in range(5000)}
    got = read([{"type": "map", "data": {"@": data}}], {"@": "count"}, limits=Limits(max_rows=3))
    t = table(got, "@")
    assert t.rows == [(["k4999"], [4999]), (["k4998"], [4998]), (["k4997"], [4997])]
    assert (t.total_rows, t.truncated) == (5000, True)


NAN = float("nan")
HOSTILE: dict[str, tuple[Any, str]] = {
    "not a mapping": (["map", 1], "unreadable message"),
    "data is a list": ({"type": "map", "data": [1, 2]}, "map message without maps"),
    "data is null": ({"type": "hist", "data": None}, "hist message without maps"),
    "bad map name": ({"type": "map", "data": {"x y": 1}}, "bad map name"),
    "NaN value": (
        {"type": "map", "data": {"@": {"a": NAN}}},
        "count() value that is not an integer",
    ),
    "bool value": (
        {"type": "map", "data": {"@": {"a": True}}},
        "count() value that is not an integer",
    ),
    "2**70": ({"type": "map", "data": {"@": {"a": 2**70}}}, "count() value that is not an integer"),
    "list for a dict": (
        {"type": "stats", "data": {"@stat": {"k": [1, 2]}}},
        "stats() value that is not an integer",
    ),
    "hist not a list": (
        {"type": "hist", "data": {"@h": {"k": "x"}}},
        "hist() buckets that are not bpftrace's",
    ),
    "hist negative count": (
        {"type": "hist", "data": {"@h": [{"min": 1, "max": 1, "count": -4}]}},
        "hist() buckets that are not bpftrace's",
    ),
    "hist bucket bounds not log2": (
        {"type": "hist", "data": {"@h": [{"min": 3, "max": 5, "count": 4}]}},
        "hist() buckets that are not log2 buckets",
    ),
    "lost events not a count": (
        {"type": "lost_events", "data": {"events": "x"}},
        "lost_events without a count",
    ),
}


@pytest.mark.parametrize("message, reason", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_prints_are_counted_never_raised(message: Any, reason: str) -> None:
    got = read([message], {"@": "count", "@stat": "stats", "@h": "hist"})
    skipped = table(got, SKIPPED)
    assert reason in [keys[1] for keys, _ in skipped.rows]


def test_huge_text_is_made_safe_and_bounded() -> None:
    key = "\x1b]0;PWNED\x07" + "k" * 1_000_000
    printf = "A" * 1_000_000 + "\n"
    got = read(
        [{"type": "map", "data": {"@": {key: 3}}}, {"type": "printf", "data": printf}],
        {"@": "count"},
    )
    ((keys, values),) = table(got, "@").rows
    assert isinstance(keys[0], str) and keys[0].startswith("\\x1b]0;PWNED\\x07kkk")
    assert len(keys[0]) <= 4096 and keys[0].endswith("[... cut]") and values == [3]
    samples = got["printf"]
    assert isinstance(samples, EventSamples)
    assert len(str(samples.events[0][1])) <= 4096


def test_nan_from_json_text_does_not_raise() -> None:
    message = json.loads('{"type": "map", "data": {"@": NaN}}')
    assert math.isnan(message["data"]["@"])
    got = read([message], {"@": "count"})
    assert "@" in got and table(got, "@").rows == []


SPLITS: dict[str, tuple[str, list[Any], list[str] | None]] = {
    "plain": ("bash,12", ["str", "int"], ["bash", "12"]),
    "comma in the string": ("a,b,12", ["str", "int"], ["a,b", "12"]),
    "comma in the middle string": ("1,a,b,2", ["int", "str", "int"], ["1", "a,b", "2"]),
    "two strings, one split": ("a,b", ["str", "str"], ["a", "b"]),
    "two strings, ambiguous": ("a,b,c", ["str", "str"], None),
    "too few pieces": ("a", ["str", "int"], None),
    "int that is not": ("a,b", ["str", "int"], None),
    "stack with commas": (
        "x,\n    f(int, char)+1\n    main+2\n",
        ["str", "stack"],
        ["x", "\n    f(int, char)+1\n    main+2\n"],
    ),
    "negative int": ("-3,x", ["int", "any"], ["-3", "x"]),
}


@pytest.mark.parametrize("text, kinds, want", SPLITS.values(), ids=SPLITS.keys())
def test_split_key(text: str, kinds: list[Any], want: list[str] | None) -> None:
    assert split_key(text, kinds) == want


def test_split_key_with_many_commas_stays_bounded() -> None:
    assert split_key("," * 10_000, ["str", "str"]) is None


def test_key_kinds_from_the_script_split_a_hostile_comm() -> None:
    message = {"type": "map", "data": {"@": {"ev,il,1,42": 3}}}
    told = read([message], {"@": "count"}, key_kinds={"@": ["str", "int"]}, keys="comm,pid")
    t = table(told, "@")
    assert [f.name for f in t.key_fields] == ["comm", "pid"]
    assert t.rows == [(["ev,il,1", 42], [3])]
    # told only the names: two fields, neither known to be an int, and three ways to split
    untold = read([message], {"@": "count"}, keys="comm,pid")
    assert table(untold, "@").rows == []
    skipped = table(untold, SKIPPED)
    assert skipped.rows == [(["@", "key that does not split into its fields"], [1])]


KEYS: dict[str, tuple[str, KeyNames]] = {
    "empty": ("", KeyNames()),
    "default": ("comm, pid", KeyNames(default=("comm", "pid"))),
    "per map": (
        "@a=comm;@=pid,tid; x",
        KeyNames(default=("x",), per_map={"@a": ("comm",), "@": ("pid", "tid")}),
    ),
}


@pytest.mark.parametrize("text, want", KEYS.values(), ids=KEYS.keys())
def test_parse_keys(text: str, want: KeyNames) -> None:
    assert parse_keys(text) == want


BAD_KEYS = {
    "not a name": ("comm,1pid", "'1pid' is not a name"),
    "repeated": ("a,a", "a name repeats"),
    "map twice": ("@a=x;@a=y", "@a is named twice"),
    "two defaults": ("a;b", "a second default entry"),
    "no equals": ("@a", "expected @map=name1,name2"),
    "bad map": ("@a-b=x", "expected @map=name1,name2"),
    "too long": ("a" * 33, "is not a name"),
    "too many": (",".join(f"k{i}" for i in range(33)), "more than 32 names"),
}


@pytest.mark.parametrize("text, problem", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_parse_keys_refuses_naming_the_field(text: str, problem: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_keys(text)
    assert caught.value.field == "params.keys"
    assert problem in str(caught.value)


def test_a_u64_count_near_2_64_is_kept_exactly() -> None:
    got = read([{"type": "map", "data": {"@": {"a": 2**64 - 1, "b": 1}}}], {"@": "count"})
    assert table(got, "@").rows == [(["a"], [2**64 - 1]), (["b"], [1])]


def test_a_keyed_hist_labels_each_key_field() -> None:
    buckets = [{"min": 4, "max": 7, "count": 2}, {"max": -1, "count": 1}]
    message = {"type": "hist", "data": {"@h": {"a,b,7": buckets}}}
    got = read([message], {"@h": "hist"}, keys="@h=comm,pid", key_kinds={"@h": ["str", "int"]})
    hist = got["@h[('comm', 'a,b'), ('pid', 7)]"]
    assert isinstance(hist, Log2Histogram) and hist.buckets == [(3, 2)]
    negative = table(got, "@h.negative")
    assert [f.name for f in negative.key_fields] == ["comm", "pid"]
    assert negative.rows == [(["a,b", 7], [1])]


def test_messages_that_are_not_ours_are_not_taken() -> None:
    maps = Maps(limits=Limits(), functions={}, keys=KeyNames())
    assert not maps.take({"type": "attached_probes", "data": {"probes": 2}})
    assert maps.results() == []


def _brute_split(text: str, kinds: list[Any]) -> list[str] | None:
    pieces = text.split(",")
    found = []
    for cuts in itertools.combinations(range(1, len(pieces)), len(kinds) - 1):
        bounds = [0, *cuts, len(pieces)]
        fields = [",".join(pieces[a:b]) for a, b in itertools.pairwise(bounds)]
        if all(fits(f, k) for f, k in zip(fields, kinds, strict=True)):
            found.append(fields)
    return found[0] if len(found) == 1 else None


def test_split_key_agrees_with_trying_every_split() -> None:
    rng = random.Random(16)
    alphabet = ["a", "7", "-2", "", "\n  f+1\n", "\n  g", "h\n"]
    for _ in range(3000):
        kinds = [rng.choice(["int", "str", "stack", "any"]) for _ in range(rng.randint(1, 4))]
        text = ",".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))
        assert split_key(text, kinds) == _brute_split(text, kinds), (text, kinds)


def test_keyed_histograms_are_bounded_keeping_the_busiest() -> None:
    data = {f"k{i}": [{"min": 1, "max": 1, "count": i + 1}] for i in range(50)}
    got = read([{"type": "hist", "data": {"@h": data}}], {"@h": "hist"}, limits=Limits(max_rows=3))
    hists = [r for r in got.values() if isinstance(r, Log2Histogram)]
    assert sorted(h.total for h in hists) == [48, 49, 50]
    skipped = table(got, SKIPPED)
    assert skipped.rows == [(["@h", "histograms beyond max_rows (the busiest kept)"], [47])]


def test_an_empty_keyed_map_is_an_empty_table() -> None:
    got = read([{"type": "stats", "data": {"@s": {}}}], {"@s": "stats"})
    assert table(got, "@s").rows == [] and SKIPPED not in got


def test_key_names_beyond_the_declared_ones_do_not_collide() -> None:
    assert parse_keys("key1").names("@", 3) == ["key1", "key1_", "key2"]


def test_a_stack_keyed_min_or_avg_is_a_table_of_folded_stacks() -> None:
    message = {"type": "stats", "data": {"@a": {"x,\n    leaf+1\n    root+2\n": 7}}}
    got = read([message], {"@a": "avg"}, key_kinds={"@a": ["str", "stack"]})
    assert table(got, "@a").rows == [(["x", "root+2;leaf+1"], [7])]
