"""A report as one CSV: a row per host metric, outlier, one-host key and missing host."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from controller.reports.models import JobReport
from node_agent.safe_text import printable

COLUMNS = ("section", "host", "metric", "label", "value", "unit", "fleet_median", "ratio", "note")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A text cell made inert: control characters escaped, a formula start quoted with `'`.

    Numbers stay numbers (a negative ratio is not a formula); only text is untrusted.
    """
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)
    quoted = "'" + text if text.startswith(FORMULA_START) else text
    return printable(quoted)


class _SafeWriter:
    """csv.writer whose text cells go through csv_cell."""

    def __init__(self, out: io.StringIO) -> None:
        self._writer = csv.writer(out, lineterminator="\n")

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([csv_cell(c) for c in row])


def render_csv(report: JobReport) -> str:
    out = io.StringIO()
    writer = _SafeWriter(out)
    writer.writerow(COLUMNS)
    for o in report.outliers:
        writer.writerow(
            ("outlier", o.host, o.metric, o.kind, o.value, "", o.median, o.score, o.sentence)
        )
    for m in report.missing:
        writer.writerow(("missing", m.host, "", m.state.value, "", "", "", "", m.reason or ""))
    for host in report.hosts:
        for metric in host.metrics:
            writer.writerow(
                (
                    "metric",
                    host.host,
                    metric.id,
                    metric.label,
                    metric.value,
                    metric.unit,
                    report.fleet.medians.get(metric.id),
                    host.deviation.get(metric.id),
                    "",
                )
            )
    for k in report.one_host_keys:
        key = " ".join(f"{f}={v}" for f, v in k.key.items())
        value = k.values[0] if k.values else ""
        writer.writerow(("one_host_key", k.host, k.table, key, value, "", "", "", ""))
    return out.getvalue()
