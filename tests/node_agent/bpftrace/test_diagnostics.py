"""bpftrace's stderr read into the run's error: code, the user's lines, nothing unprintable."""

from __future__ import annotations

import pytest

from node_agent.bpftrace.diagnostics import MAX_MESSAGE, diagnose
from node_agent.errors import (
    AttachError,
    FleettraceError,
    Killed,
    ProgramCompileError,
    VerifierRejected,
)

MEMLOCK = (
    "ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK for bpftrace. If your program is"
    ' not loading, you can try "ulimit -l 8192" to fix the problem\n'
)
SCRIPT = "// counts\nBEGIN { @x = 1 +; }\ntracepoint:a:b { @ = count(); }"


@pytest.mark.parametrize(
    ("stderr", "kind", "message"),
    [
        (
            MEMLOCK + "/tmp/x/script.bt:2:16-18: ERROR: syntax error, unexpected ;\n"
            "BEGIN { @x = 1 +; }\n               ~~\n",
            ProgramCompileError,
            "bpftrace: line 2: syntax error, unexpected ; (in: BEGIN { @x = 1 +; })",
        ),
        (
            "/tmp/x/script.bt:2-3: ERROR: tracepoint not found: a:b\n",
            AttachError,
            "bpftrace: line 3: tracepoint not found: a:b (in: tracepoint:a:b { @ = count(); })",
        ),
        (
            "/tmp/x/script.bt:3:1-10: WARNING: f is not traceable\n"
            "ERROR: Error attaching probe: 'kprobe:f'\n",
            AttachError,
            "bpftrace: Error attaching probe: 'kprobe:f'",
        ),
        ("No probes to attach\n", AttachError, "bpftrace: No probes to attach"),
        (
            "Error log: \n0: (05) goto pc-1\ninfinite loop detected at insn 0\n\n"
            "ERROR: Error loading program: BEGIN\n",
            VerifierRejected,
            "bpftrace: line 2: Error loading program: BEGIN",
        ),
        (MEMLOCK, FleettraceError, "bpftrace: failed (exit code 1)"),
    ],
)
def test_errors_get_their_code_and_the_users_line(
    stderr: str, kind: type[Exception], message: str
) -> None:
    error = diagnose(stderr, SCRIPT, exit_code=1)
    assert type(error) is kind
    assert error.message == message
    assert "RLIMIT_MEMLOCK" not in (error.detail or "")


def test_a_load_or_attach_error_names_the_probes_line() -> None:
    script = "// x\nBEGIN { }\nkprobe:vfs_* { @ = count(); }"
    error = diagnose("ERROR: Error attaching probe: 'kprobe:vfs_read'\n", script, exit_code=1)
    assert error.message == "bpftrace: line 3: Error attaching probe: 'kprobe:vfs_read'"
    assert error.detail is not None and "  3 | kprobe:vfs_* { @ = count(); }" in error.detail
    error = diagnose("ERROR: Error loading program: BEGIN\n", script, exit_code=1)
    assert error.message == "bpftrace: line 2: Error loading program: BEGIN"


def test_the_verifier_log_is_the_detail() -> None:
    stderr = (
        "Error log: \ninfinite loop detected at insn 0\n\nERROR: Error loading program: BEGIN\n"
    )
    error = diagnose(stderr, SCRIPT, exit_code=255)
    assert error.detail is not None and "infinite loop detected" in error.detail


def test_hostile_text_is_printable_and_bounded() -> None:
    script = "BEGIN { @x = 1 +; } // \x1b]0;owned\x07" + "A" * 10_000
    stderr = f"s.bt:1:16-18: ERROR: syntax error \x1b[2J{'B' * 10_000}\n"
    error = diagnose(stderr, script, exit_code=1)
    assert len(error.message) <= MAX_MESSAGE
    for text in (error.message, error.detail or ""):
        assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b" in error.message


def test_a_silent_death_by_signal_is_killed_and_a_silent_failure_internal() -> None:
    killed = diagnose(MEMLOCK, SCRIPT, exit_code=-9)
    assert type(killed) is Killed and "killed by a signal (exit code -9)" in killed.message
    failed = diagnose(MEMLOCK, SCRIPT, exit_code=3)
    assert type(failed) is FleettraceError and "failed (exit code 3)" in failed.message
