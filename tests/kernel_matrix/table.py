"""The program x kernel table the matrix test writes (test-artifacts/kernel-matrix.md), and
the check of one kernel's lines: what the test asserts, in one place."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_agent.protocol import Feature
from tests.kernel_matrix.vm import GuestRun
from tests.kernel_matrix.workloads import Row

ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "kernel-matrix.md"
CELL_CHARS = 160
# An unsupported reason must name what is missing: a feature, a path, a package or an error.
NAMED = re.compile(
    r"\b(" + "|".join(f.value for f in Feature) + r")\b"
    r"|/[\w.+-]+/|linux-headers-|\btracepoint [\w:]+"
    r"|[Ee]rror|not permitted|missing|[Nn]o such|refused|not found|does not exist"
)


@dataclass
class Column:
    title: str
    run: GuestRun
    emulated: bool
    only: frozenset[str] | None = None  # the programs it ran, when not all


NOT_RUN = "·"  # a row a column with `only` did not run


def why_unnamed(reason: str) -> bool:
    return not reason.strip() or NAMED.search(reason) is None


def problems(run: GuestRun, rows: list[Row]) -> list[str]:
    """Everything wrong with one kernel's run, each said with the evidence (empty: right)."""
    console = (
        f"\nthe VM's kernel and vng said:\n{run.console_tail}" if run.console_tail.strip() else ""
    )
    if run.timed_out:
        return [
            f"{run.kernel}: the runner did not finish within {run.timeout_s:g} s; its last"
            f" output:\n{run.log_tail}{console}"
        ]
    if run.one("end") is None:
        return [
            f"{run.kernel}: the runner ended without its last line; its output:\n{run.log_tail}"
            f"{console}"
        ]
    probe = run.one("probe") or {}
    if not run.capabilities():
        return [f"{run.kernel}: no capability report: {probe.get('error')}"]
    support = {p["program"]: p for p in run.capabilities()["programs"]}
    found = run.programs()
    wrong = [f"{run.kernel}: no line for {r.name}" for r in rows if r.name not in found]
    for row in rows:
        record = found.get(row.name)
        if record is not None:
            said = row_support(support.get(row.program, {}), row)
            wrong += _program_problems(run.kernel, record, said)
    return wrong


def row_support(program: dict[str, Any], row: Row) -> dict[str, Any]:
    """The probe's word on a row: the program's, or for a forced option, that option's."""
    if row.attach is None or not program.get("supported"):
        return program
    options: dict[str, str | None] = program.get("attach") or {}
    if row.attach not in options:
        return {"supported": False, "reason": f"the probe lists no option {row.attach}"}
    reason = options[row.attach]
    return {"supported": reason is None, "reason": reason}


def _program_problems(kernel: str, record: dict[str, Any], support: dict[str, Any]) -> list[str]:
    where = f"{kernel} {record['program']}"
    status, reason = record["status"], str(record.get("reason") or "")
    supported = bool(support.get("supported"))
    if status == "failed":
        said = f"answer {record.get('answer')!r}, expected {record.get('expected')!r}"
        return [
            f"{where}: failed ({reason}); {said}" if "answer" in record else f"{where}: {reason}"
        ]
    if status == "unsupported":
        if supported:
            return [f"{where}: the probe says supported, yet the run is unsupported: {reason}"]
        if why_unnamed(reason):
            return [f"{where}: unsupported without naming what is missing: {reason!r}"]
        return []
    if not supported:  # ran right, though the probe would keep the controller from sending it
        return [f"{where}: ran right, but the probe says unsupported: {support.get('reason')}"]
    return []


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "**no line**"
    status = record["status"]
    if status == "ok":
        seconds = (record.get("compile_s") or 0) + (record.get("attach_s") or 0)
        attach = f" ({record['attach']})" if record.get("attach") else ""
        text = f"ok{attach}, {seconds:.1f} s"
    elif status == "unsupported":
        text = f"unsupported: {str(record.get('reason', '')).removeprefix('unsupported: ')}"
    else:
        text = f"**FAILED**: {record.get('reason', '')}"
    text = " ".join(text.split())
    if len(text) > CELL_CHARS:
        text = text[: CELL_CHARS - 1] + "…"
    return text.replace("|", "\\|")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def markdown(columns: list[Column], rows: list[Row], wall_s: float, lock_wait_s: float) -> str:
    titles = [c.title for c in columns]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Kernel matrix",
        "",
        f"Written by `tests/kernel_matrix/test_matrix.py` on {stamp}."
        " Each program ran through the agent's runner on a workload whose answer is known;"
        " a cell is `ok` (the right answer; the attach point a program with options picked,"
        " or was given in `attach=`;"
        " compile+attach seconds), or `unsupported` with the reason, or **FAILED**."
        " VM columns ran **under software emulation** (QEMU without KVM): their times"
        " measure QEMU, not the programs.",
        "",
        "| program | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(titles),
    ]
    if any(c.only is not None for c in columns):
        lines[2] += (
            f" `{NOT_RUN}`: not run in that column (CI runs only the rows whose answers hang on"
            " kernel struct layouts there; `FLEETTRACE_VM_TESTS=1` runs them all)."
        )
    for row in rows:
        cells = [
            NOT_RUN
            if c.only is not None and row.program not in c.only
            else _cell(c.run.programs().get(row.name))
            for c in columns
        ]
        lines.append(f"| `{row.name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| kernel | headers | launch to runner start | probe | runner (all programs)"
        " | launch to exit |",
        "|---|---|---|---|---|---|",
    ]
    for c in columns:
        probe = c.run.one("probe") or {}
        end = c.run.one("end") or {}
        mark = " (emulated)" if c.emulated else ""
        headers = c.run.capabilities().get("headers", "-")
        lines.append(
            f"| {c.title}{mark} | {headers} | {_seconds(c.run.boot_to_start_s)} |"
            f" {_seconds(probe.get('seconds'))} | {_seconds(end.get('seconds'))} |"
            f" {_seconds(c.run.wall_s)} |"
        )
    waited = f", {lock_wait_s:.0f} s of it waiting for the VM lock" if lock_wait_s >= 1 else ""
    lines += ["", f"Whole matrix test: {wall_s:.0f} s of wall time{waited}.", ""]
    return "\n".join(lines)


def write(columns: list[Column], rows: list[Row], wall_s: float, lock_wait_s: float = 0.0) -> Path:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(markdown(columns, rows, wall_s, lock_wait_s))
    return ARTIFACT
