"""A job's results with the hosts side by side: the client's view, or a minimal fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node_agent.render import slot_bounds

BAR = 12
TOP_ROWS = 12


def show(job: dict[str, Any], results: dict[str, Any], out: Callable[[str], None]) -> None:
    """`fleettrace jobs results`' view when the client commands are installed, else ours."""
    try:
        from controller.cli.sidebyside import render_results as client_view
        from controller.cli.text import emit, terminal_width
        from controller.jobs.models import JobPublic, JobResults
    except ImportError:
        out(render_results(results))
        return
    runs = JobPublic.model_validate(job).runs
    emit(client_view(JobResults.model_validate(results), runs=runs, width=terminal_width()))


def render_results(results: dict[str, Any]) -> str:
    """GET /v1/jobs/{id}/results as text: one column per host, one block per result name."""
    hosts = [h["host"] for h in results["hosts"]]
    lines = [f"job {results['job_id']}  {results['program']}  {results['state']}"]
    for h in results["hosts"]:
        reason = f" ({h['stats']['compile_s']:.2f}s compile)" if h.get("stats") else ""
        lines.append(f"  {h['host']:<12} {h['state']:<10} snapshot {h['seq']}{reason}")
    by_name: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for h in results["hosts"]:
        for result in h["results"]:
            by_name.setdefault(result["name"], {}).setdefault(h["host"], []).append(result)
    for name, per_host in by_name.items():
        kind = next(iter(per_host.values()))[0]["kind"]
        lines.append("")
        if kind == "log2_histogram":
            lines += _histograms(name, hosts, per_host)
        elif kind == "counter_table":
            lines += _tables(name, hosts, per_host)
        else:
            lines.append(f"{name} ({kind})")
            lines += [f"  {h:<12} {len(per_host.get(h, []))} result(s)" for h in hosts]
    return "\n".join(lines)


def _merged_buckets(hists: list[dict[str, Any]]) -> dict[int, int]:
    buckets: dict[int, int] = {}
    for hist in hists:
        for slot, count in hist["buckets"]:
            buckets[slot] = buckets.get(slot, 0) + count
    return buckets


def _quantile(buckets: dict[int, int], q: float) -> str:
    total = sum(buckets.values())
    if not total:
        return "-"
    seen = 0
    for slot in sorted(buckets):
        seen += buckets[slot]
        if seen >= q * total:
            return f"<= {slot_bounds(slot)[1]}"
    return "-"


def _histograms(
    name: str, hosts: list[str], per_host: dict[str, list[dict[str, Any]]]
) -> list[str]:
    unit = next(iter(per_host.values()))[0]["unit"]
    merged = {h: _merged_buckets(per_host.get(h, [])) for h in hosts}
    slots = [s for b in merged.values() for s in b if b[s]]
    cell = 9 + BAR
    lines = [f"{name} ({unit})".ljust(26) + "".join(f"{h:>8}".ljust(cell) for h in hosts)]
    if not slots:
        return [*lines, "  (no samples)"]
    peak = {h: max(b.values(), default=0) for h, b in merged.items()}
    for slot in range(min(slots), max(slots) + 1):
        low, high = slot_bounds(slot)
        row = f"{low:>10} -> {high:<10}  "
        for h in hosts:
            count = merged[h].get(slot, 0)
            bar = "*" * (count * BAR // peak[h]) if peak[h] else ""
            row += f"{count:>8} {bar:<{BAR}}"
        lines.append(row.rstrip())
    for label, q in (("count", 0.0), ("p50", 0.5), ("p99", 0.99)):
        row = f"{label:>24}  "
        for h in hosts:
            value = str(sum(merged[h].values())) if label == "count" else _quantile(merged[h], q)
            row += f"{value:>8}".ljust(cell)
        lines.append(row.rstrip())
    return lines


def _tables(name: str, hosts: list[str], per_host: dict[str, list[dict[str, Any]]]) -> list[str]:
    counts: dict[str, dict[str, int]] = {}
    for host, tables in per_host.items():
        for table in tables:
            for key, values in table["rows"]:
                label = " ".join(str(k) for k in key)
                row = counts.setdefault(label, {})
                row[host] = row.get(host, 0) + int(values[0])
    top = sorted(counts, key=lambda k: -sum(counts[k].values()))[:TOP_ROWS]
    width = max([len(name), *(len(k) for k in top)]) + 2
    lines = [f"{name:<{width}}" + "".join(f"{h:>12}" for h in hosts)]
    for label in top:
        lines.append(f"{label:<{width}}" + "".join(f"{counts[label].get(h, 0):>12}" for h in hosts))
    if len(counts) > len(top):
        lines.append(f"({len(counts) - len(top)} more rows)")
    return lines
