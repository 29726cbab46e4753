"""bpftrace's complaints (stderr) turned into the run's error: the right code, the user's lines.

bpftrace 0.17 prints `FILE:LINE:COL-COL: ERROR: text` (or `FILE:L1-L2: ERROR: ...`) for parse
and semantic errors, then echoes the line; attach and load failures come without a location
(`ERROR: Error attaching probe: 'kprobe:f'`, `ERROR: Error loading program: BEGIN`), a load
failure after the verifier's log (printed with -v). The script is ours instrumented on the
user's own lines, so a line number is the user's line, shown from the user's text.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re

from node_agent.bpftrace.syntax import parse
from node_agent.errors import (
    AttachError,
    FleettraceError,
    Killed,
    ProgramCompileError,
    VerifierRejected,
)
from node_agent.protocol import truncate_log
from node_agent.safe_text import printable, printable_lines

MAX_MESSAGE = 400  # characters of the one-line message
MAX_SHOWN = 3  # user lines shown per located error
_LOCATED = re.compile(
    r"^(?P<file>[^\s:]+):(?P<line>\d+)(?:-(?P<last>\d+))?(?::\d+(?:-\d+)?)?:"
    r" (?P<level>ERROR|WARNING): (?P<text>.*)$"
)
_ERROR = re.compile(r"^(?:ERROR|FATAL): (?P<text>.*)$")
# Noise on every run here: bpftrace cannot raise RLIMIT_MEMLOCK in a container (harmless on
# kernels that account BPF memory to cgroups, 5.11+).
_NOISE = ("couldn't set RLIMIT_MEMLOCK",)
_ATTACH = (
    "Error attaching probe",
    "No probes to attach",
    "tracepoint not found",
    "does not exist or is not executable",
    "Could not resolve symbol",
    "Unable to attach",
    "Could not add",
    "is not traceable",
)


def _shown(script_lines: list[str], first: int, last: int) -> list[str]:
    last = min(last, first + MAX_SHOWN - 1, len(script_lines))
    return [f"  {n} | {printable(script_lines[n - 1])}" for n in range(first, last + 1)]


def _quoted(script_lines: list[str], line: int) -> str:
    if not 0 < line <= len(script_lines) or not script_lines[line - 1].strip():
        return ""
    text = script_lines[line - 1].strip()
    return f" (in: {text[:77] + '...' if len(text) > 80 else text})"


def _probe_line(script: str, text: str) -> int | None:
    """The line of the probe an attach or load error names (`... probe: 'kprobe:f'`)."""
    named = re.search(r"(?:Error loading program|Error attaching probe): '?([^'\s]+)'?", text)
    if named is None:
        return None
    with contextlib.suppress(FleettraceError):
        for probe in parse(script).probes:
            if any(fnmatch.fnmatchcase(named.group(1), a) for a in probe.attach):
                return probe.line
    return None


def _verifier_log(stderr: str) -> str:
    """The verifier's log bpftrace -v printed for the program that failed to load."""
    start = stderr.rfind("Error log:")
    return stderr[start:] if start >= 0 else stderr


def diagnose(stderr: str, script: str, *, exit_code: int | None) -> FleettraceError:
    """The run's error from what bpftrace printed on stderr before it failed."""
    script_lines = script.split("\n")
    messages: list[str] = []
    detail: list[str] = []
    kind: type[FleettraceError] = ProgramCompileError
    for raw in stderr.splitlines():
        if any(noise in raw for noise in _NOISE):
            continue
        located = _LOCATED.match(raw)
        plain = _ERROR.match(raw)
        if located and located.group("level") == "ERROR":
            first = int(located.group("line"))
            last = int(located.group("last") or first)
            # A location of a whole probe (L1-L2) points at its attach line, the last one.
            where = last if located.group("last") else first
            text = located.group("text")
            messages.append(f"line {where}: {text}{_quoted(script_lines, where)}")
            detail.append(f"line {where}: {text}")
            detail.extend(_shown(script_lines, where, last))
            if any(sign in text for sign in _ATTACH):
                kind = AttachError
        elif plain:
            text = plain.group("text")
            line = _probe_line(script, text)
            messages.append(f"line {line}: {text}" if line else text)
            detail.append(text)
            if line:
                detail.extend(_shown(script_lines, line, line))
            if "Error loading program" in text:
                kind = VerifierRejected
                detail.append(_verifier_log(stderr))
            elif any(sign in text for sign in _ATTACH):
                kind = AttachError
        elif raw.strip() in ("No probes to attach",):
            messages.append(raw.strip())
            kind = AttachError
    if not messages:
        signalled = exit_code is not None and exit_code < 0
        code = "killed by a signal" if signalled else "failed"
        tail = [line for line in stderr.splitlines() if not any(n in line for n in _NOISE)]
        messages.append(f"{code} (exit code {exit_code})")
        kind = Killed if signalled else FleettraceError  # nothing said why: internal
        detail.extend(tail[-20:])
    message = printable("bpftrace: " + "; ".join(dict.fromkeys(messages)))
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return kind(message, detail=truncate_log(printable_lines("\n".join(detail))))
