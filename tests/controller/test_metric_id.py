"""Report metric ids: structured in the code, the same `SOURCE:NAME:ASPECT` text on the wire."""

from __future__ import annotations

import pytest

from controller.reports.models import MetricId

IDS: list[tuple[str, str, MetricId]] = [
    ("a percentile", "hist:latency:p99", MetricId("hist", "latency", "p99")),
    (
        "labels holding a colon",
        "hist:latency{addr=10.0.0.1:80}:distribution",
        MetricId("hist", "latency{addr=10.0.0.1:80}", "distribution"),
    ),
    ("a table's field", "table:syscalls:count", MetricId("table", "syscalls", "count")),
    (
        "a key holding colons",
        "key:conns:addr=::1 port=443",
        MetricId("key", "conns", "addr=::1 port=443"),
    ),
]


@pytest.mark.parametrize(("raw", "parsed"), [c[1:] for c in IDS], ids=[c[0] for c in IDS])
def test_a_metric_id_parses_and_formats_back_to_the_same_text(raw: str, parsed: MetricId) -> None:
    assert MetricId.parse(raw) == parsed
    assert str(parsed) == raw


@pytest.mark.parametrize("raw", ["", "p99", "hist:latency", "bogus:a:b", ":a:b"])
def test_a_malformed_metric_id_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="bad metric id"):
        MetricId.parse(raw)


def test_a_key_belongs_to_its_own_table_only() -> None:
    table = MetricId("table", "conns", "count")
    assert MetricId.parse("key:conns:port=1").is_key_of(table)
    assert not MetricId.parse("key:conns2:port=1").is_key_of(table)
    assert not MetricId.parse("table:conns:bytes").is_key_of(table)
