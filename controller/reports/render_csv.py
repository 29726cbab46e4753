"""A report as one CSV: a row per host metric, outlier, one-host key and missing host."""

from __future__ import annotations

import csv
import io

from controller.reports.models import JobReport

COLUMNS = ("section", "host", "metric", "label", "value", "unit", "fleet_median", "ratio", "note")


def render_csv(report: JobReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
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
