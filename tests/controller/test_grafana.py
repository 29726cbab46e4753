"""deploy/grafana/fleettrace.json asks only for metrics fleettrace exports.

The names come out of each panel's PromQL; the exported ones are a real scrape's families
(after a request, so the latency histogram has series) plus lane m2's per-host agent families,
as the contract names them (controller/hosts/agent_metrics.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.controller.conftest import Tokens

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "fleettrace.json"
AGENT_FAMILIES = {
    "fleettrace_agent_resident_memory_bytes",
    "fleettrace_agent_proportional_memory_bytes",
    "fleettrace_agent_cpu_seconds_total",
    "fleettrace_agent_programs_loaded",
    "fleettrace_agent_traces_run_total",
    "fleettrace_agent_traces_failed_total",
    "fleettrace_agent_last_error_timestamp_seconds",
    "fleettrace_agent_last_heartbeat_timestamp_seconds",
}
# What a PromQL expression may name besides metrics.
FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "rate", "irate",
    "increase", "delta", "histogram_quantile", "time", "abs", "clamp_min", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring)\s*\([^)]*\)")
_NAMES = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and ranges dropped)."""
    bare = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub(" ", expr))))
    bare = re.sub(r"\b\d+(\.\d+)?\b", " ", bare)
    return {n for n in _NAMES.findall(bare) if n not in FUNCTIONS}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (state) (fleettrace_runs)", {"fleettrace_runs"}),
        ('rate(a_total{x="b c", le=~"1|2"}[5m]) / on(job) b', {"a_total", "b"}),
        ("histogram_quantile(0.99, sum by (le, route) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("time() - t_seconds", {"t_seconds"}),
    ],
)
def test_names_in_reads_promql(expr: str, names: set[str]) -> None:
    assert names_in(expr) == names


def exported(text: str) -> set[str]:
    """Every series name a scrape's families give (a counter's `_total`, a histogram's
    `_bucket`, `_count`, `_sum`), families without samples included."""
    found: set[str] = set()
    for family in text_string_to_metric_families(text):
        found |= {s.name for s in family.samples}
        if family.type == "counter":
            found.add(f"{family.name}_total")
        elif family.type == "histogram":
            found |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
        else:
            found.add(family.name)
    return found


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def test_every_dashboard_expression_names_only_exported_metrics(
    client: TestClient, tokens: Tokens
) -> None:
    client.get("/v1/hosts", headers=tokens.headers("viewer"))
    scrape = client.get("/metrics", headers=tokens.headers("viewer"))
    assert scrape.status_code == 200
    known = exported(scrape.text) | AGENT_FAMILIES
    exprs = expressions()
    assert len(exprs) >= 20
    named: set[str] = set()
    for expr in exprs:
        names = names_in(expr)
        assert names, f"names no metric: {expr}"
        assert names <= known, f"{expr}: not exported: {sorted(names - known)}"
        named |= names
    # The four sides the dashboard is for are all there.
    for needed in (
        "fleettrace_hosts",
        "fleettrace_ingest_lag_seconds",
        "fleettrace_http_request_duration_seconds_bucket",
        "fleettrace_agent_cpu_seconds_total",
    ):
        assert needed in named, needed
