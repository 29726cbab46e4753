"""Reading a real /metrics answer in tests: its families and samples, and promtool's verdict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.controller.support import missing

# setup.sh --for tests puts promtool in the venv (taken out of Debian's prometheus package).
PROMTOOL = Path(sys.prefix) / "bin" / "promtool"


def promtool() -> str:
    """The promtool the tests use, or the test fails (skips outside CI) naming how to get it."""
    found = str(PROMTOOL) if PROMTOOL.is_file() else shutil.which("promtool")
    if found is None:
        missing("promtool (bash scripts/setup.sh --for tests)")
    assert found is not None
    return found


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def families(text: str) -> set[str]:
    """The families' names as a PromQL query names them (a counter's with `_total`)."""
    found: set[str] = set()
    for family in text_string_to_metric_families(text):
        found |= {s.name for s in family.samples}
    return found


def value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The sample `name` whose labels include `labels`; None when there is none."""
    for s in samples(text):
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
            return float(s.value)
    return None


def total(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum over every sample `name` whose labels include `labels` (0 when none)."""
    return sum(
        float(s.value)
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    )


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on a scrape (exit 0: no error and no lint problem)."""
    return subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
