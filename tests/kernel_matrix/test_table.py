"""The matrix's judgement of one kernel's lines, on made-up lines (logic only: the real runs
are test_matrix.py's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kernel_matrix.table import NOT_RUN, Column, markdown, problems
from tests.kernel_matrix.vm import GuestRun
from tests.kernel_matrix.workloads import Row


def _run(status: str, reason: str = "", supported: bool = True, **extra: Any) -> GuestRun:
    support = {"program": "p", "supported": supported, "reason": None if supported else "x"}
    caps = {"headers": "exact", "programs": [support]}
    records = [
        {"type": "start", "kernel": "6.1.0-57-amd64"},
        {"type": "program", "program": "p", "status": status, "reason": reason, **extra},
        {"type": "probe", "seconds": 55, "capabilities": caps},
        {"type": "end", "seconds": 99},
    ]
    return GuestRun("6.1", records=records, timeout_s=600)


@pytest.mark.parametrize(
    ("run", "wrong"),
    [
        (_run("ok"), None),
        (_run("unsupported", "needs kprobes, which this host lacks", supported=False), None),
        (_run("unsupported", "no /lib/modules/6.1.0-57-amd64/build", supported=False), None),
        (_run("unsupported", "unsupported", supported=False), "without naming"),
        (_run("unsupported", "", supported=False), "without naming"),
        (_run("unsupported", "needs kprobes"), "the probe says supported"),
        (_run("ok", supported=False), "the probe says unsupported"),
        (_run("failed", "wrong answer", answer=3, expected=4), "answer 3, expected 4"),
        (_run("failed", "compile_error: boom"), "compile_error: boom"),
    ],
)
def test_a_program_line_is_judged(run: GuestRun, wrong: str | None) -> None:
    found = problems(run, [Row("p")])
    if wrong is None:
        assert found == []
    else:
        assert len(found) == 1 and wrong in found[0], found


def test_a_missing_program_a_hang_and_a_cut_run_are_problems() -> None:
    assert problems(_run("ok"), [Row("p"), Row("q")]) == ["6.1: no line for q"]
    hung = GuestRun("6.1", log_tail="last words", timed_out=True, timeout_s=90)
    (said,) = problems(hung, [Row("p")])
    assert "did not finish within 90 s" in said and "last words" in said
    cut = _run("ok")
    cut.records.pop()  # no end line: the guest died (QEMU killed, a panic)
    (said,) = problems(cut, [Row("p")])
    assert "without its last line" in said and "vng said" not in said
    cut.console_tail = "Out of memory: Killed process 212 (python3)"
    (said,) = problems(cut, [Row("p")])
    assert "the VM's kernel and vng said:\nOut of memory: Killed process 212" in said


def test_the_table_escapes_and_bounds_what_a_guest_wrote() -> None:
    hostile = _run("unsupported", "no /x | y " + "z" * 500, supported=False)
    text = markdown([Column("6.1 (VM)", hostile, emulated=True)], [Row("p")], 10.0, 0.0)
    row = next(line for line in text.splitlines() if line.startswith("| `p`"))
    assert "\\|" in row and len(row) < 200
    assert "(emulated)" in text and "under software emulation" in text


def _forced(status: str, reason: str = "") -> GuestRun:
    """A line for `p attach=kprobe`, on a host whose probe has fentry but not kprobes."""
    options = {"fentry": None, "kprobe": "needs kprobes (no /sys/kernel/tracing/kprobe_events)"}
    support = {"program": "p", "supported": True, "reason": None, "attach": options}
    line = {"type": "program", "program": "p attach=kprobe", "status": status, "reason": reason}
    records = [
        {"type": "start", "kernel": "6.18"},
        line,
        {"type": "probe", "seconds": 5, "capabilities": {"programs": [support]}},
        {"type": "end", "seconds": 9},
    ]
    return GuestRun("6.18", records=records, timeout_s=600)


def test_a_forced_option_is_judged_by_the_probes_word_on_that_option() -> None:
    row = Row("p", "kprobe")
    assert row.name == "p attach=kprobe"
    said = "unsupported: needs kprobes (no /sys/kernel/tracing/kprobe_events)"
    assert problems(_forced("unsupported", said), [row]) == []
    (wrong,) = problems(_forced("ok"), [row])
    assert "the probe says unsupported: needs kprobes" in wrong
    fentry = _forced("unsupported", "needs fentry")
    fentry.records[1]["program"] = "p attach=fentry"
    (wrong,) = problems(fentry, [Row("p", "fentry")])
    assert "the probe says supported" in wrong


def test_a_column_of_some_programs_marks_the_others_not_run() -> None:
    full = Column("6.1 (VM)", _run("ok"), emulated=True)
    some = Column("6.12, approximate (VM)", _run("ok"), emulated=True, only=frozenset({"p"}))
    text = markdown([full, some], [Row("p"), Row("q")], 10.0, 0.0)
    lines = text.splitlines()
    assert next(x for x in lines if x.startswith("| `p`")) == "| `p` | ok, 0.0 s | ok, 0.0 s |"
    q = next(x for x in lines if x.startswith("| `q`"))
    assert q == f"| `q` | **no line** | {NOT_RUN} |"
    assert "FLEETTRACE_VM_TESTS=1" in lines[2]
    assert "FLEETTRACE_VM_TESTS" not in markdown([full], [Row("p")], 10.0, 0.0)
