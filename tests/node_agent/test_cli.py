"""fleettrace-agent as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node_agent.arguments import parse_duration
from node_agent.capabilities import bpftrace_version


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node_agent.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "nosuch", "--duration", "1s"], "unknown program 'nosuch'"),
        (["run", "syscalls", "--duration", "soon"], "bad duration"),
        (["run", "syscalls", "--duration", "0"], "must be positive"),
        (["run", "syscalls", "--duration", "1s", "--param", "per_process=maybe"], "per_process"),
        (["run", "syscalls", "--duration", "1s", "--param", "nope=1"], "params.nope"),
        (["run", "syscalls", "--duration", "1s", "--param", "novalue"], "name=value"),
        (["run", "offcputime", "--duration", "1s", "--param", "attach=kprobe"], "params.attach"),
        (["run", "syscalls", "--duration", "1s", "--param", "attach=auto"], "params.attach"),
        (["run", "syscalls", "--duration", "1s", "--pid", "0"], "--pid"),
        (["run", "syscalls", "--duration", "1s", "--max-rows", "0"], "--max-rows"),
        (["run", "syscalls", "--duration", "2h", "--max-duration", "1h"], "duration_s"),
        (["run", "syscalls"], "--duration"),
        (["run", "syscalls", "--duration", "1s", "--cgroup", "../.."], "'..'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = agent(*args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fleettrace-agent: error:") and needle in lines[0]


def test_programs_json_lists_the_catalog() -> None:
    result = agent("programs", "--json")
    assert result.returncode == 0
    names = {p["name"] for p in json.loads(result.stdout)}
    assert {"syscalls", "runqlat", "cpu_profile", "custom"} <= names


@pytest.mark.bcc
def test_probe_reports_features_and_why_programs_cannot_run() -> None:
    result = agent("probe", "--allow-custom", "--allow-bpftrace")
    assert result.returncode == 0, result.stderr
    caps = json.loads(result.stdout)
    assert caps["kernel_release"] == os.uname().release
    assert caps["features"]["tracepoints"] is True
    assert caps["headers"] in {"exact", "approximate", "none"}
    for feature, ok in caps["features"].items():
        if not ok:
            assert caps["feature_errors"][feature]
    support = {p["program"]: p for p in caps["programs"]}
    assert support["syscalls"]["supported"] is True
    described = {p["name"]: p for p in json.loads(agent("programs", "--json").stdout)}
    for name, program in support.items():
        lacking = {f for f in described[name]["features"] if not caps["features"][f]}
        # A program with attach options runs when any option has all it needs.
        options = [set(o["features"]) for o in described[name]["attach"]]
        if options and not lacking:
            lacking = min(({f for f in o if not caps["features"][f]} for o in options), key=len)
        assert program["supported"] is (not lacking)
        if lacking:
            assert all(f in program["reason"] for f in lacking)


def _installed_bpftrace() -> str:
    """The version the host's own bpftrace prints, as `bpftrace v0.17.0` says it."""
    out = subprocess.run(["bpftrace", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1].removeprefix("v")


@pytest.mark.bcc
def test_probe_reports_the_installed_bpftrace_and_its_version() -> None:
    caps = json.loads(agent("probe", "--allow-bpftrace").stdout)
    assert caps["bpftrace_version"] == _installed_bpftrace()
    assert caps["features"]["bpftrace"] is True
    assert "bpftrace" not in caps["feature_errors"]
    support = {p["program"]: p for p in caps["programs"]}
    assert support["bpftrace"] == {
        "program": "bpftrace",
        "supported": True,
        "reason": None,
        "attach": {},  # bpftrace has no attach options of its own
    }


@pytest.mark.bcc
def test_an_agent_that_does_not_allow_them_reports_bpftrace_and_custom_unsupported() -> None:
    caps = json.loads(agent("probe").stdout)
    support = {p["program"]: p for p in caps["programs"]}
    # bpftrace is there and works: only the agent's own setting stops it.
    assert caps["features"]["bpftrace"] is True
    assert support["bpftrace"]["supported"] is False
    assert "allow_bpftrace is off" in support["bpftrace"]["reason"]
    assert support["custom"]["supported"] is False
    assert "allow_custom is off" in support["custom"]["reason"]
    assert support["syscalls"]["supported"] is True


def _probe_with_path(path: str) -> dict[str, Any]:
    env = {**os.environ, "PATH": path}
    result = subprocess.run(
        [sys.executable, "-m", "node_agent.cli", "probe", "--allow-bpftrace"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    caps: dict[str, Any] = json.loads(result.stdout)
    return caps


def _fake_bpftrace(directory: Path, body: str) -> str:
    """A `bpftrace` on a PATH of its own (only for what a real one cannot be made to do here)."""
    script = directory / "bpftrace"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(directory)


@pytest.mark.bcc
def test_a_host_without_bpftrace_says_how_to_get_it(tmp_path: Path) -> None:
    caps = _probe_with_path(str(tmp_path))  # an empty PATH: no bpftrace anywhere on it
    assert caps["bpftrace_version"] is None
    assert caps["features"]["bpftrace"] is False
    reason = "no bpftrace on PATH (apt-get install bpftrace)"
    assert caps["feature_errors"]["bpftrace"] == reason
    (bpftrace,) = [p for p in caps["programs"] if p["program"] == "bpftrace"]
    assert bpftrace["supported"] is False
    assert "needs bpftrace" in bpftrace["reason"] and reason in bpftrace["reason"]
    # Everything else is unaffected.
    assert {p["program"]: p["supported"] for p in caps["programs"]}["syscalls"] is True


@pytest.mark.parametrize(
    ("body", "version", "reason"),
    [
        ('echo "bpftrace v0.11.3"', "0.11.3", "bpftrace 0.11.3 is older than 0.13"),
        (
            'echo "bpftrace: error while loading shared libraries: libbcc.so.0" >&2; exit 127',
            None,
            "failed with status 127: bpftrace: error while loading shared libraries",
        ),
        ('echo "something else"', None, "printed no version: something else"),
        ("exec /bin/sleep 30", None, "did not answer within 0.5 s"),
        ('echo "bpftrace v1234567.1"', None, "printed no version: bpftrace v1234567.1"),
        (r'printf "\033]0;pwned\007 no version\n"', None, r"printed no version: \x1b]0;pwned"),
        (
            "/usr/bin/head -c 100000 /dev/zero | /usr/bin/tr '\\0' x; exit 3",
            None,
            "failed with status 3: xxx",
        ),
    ],
    ids=["too old", "fails to run", "no version", "hangs", "huge", "escapes", "endless line"],
)
def test_a_bpftrace_that_cannot_serve_is_reported_with_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, version: str | None, reason: str
) -> None:
    monkeypatch.setenv("PATH", _fake_bpftrace(tmp_path, body))
    got, why = bpftrace_version(timeout_s=0.5)
    assert got == version
    assert why is not None and reason in why, why
    assert len(why) < 500 and why.isprintable(), why  # one bounded line, whatever it printed


def test_the_probe_reads_bpftrace_versions_as_their_builds_print_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for printed, version in [
        ("bpftrace v0.17.0", "0.17.0"),
        ("bpftrace v0.14.0-vanilla", "0.14.0"),
        ("bpftrace 0.20.1", "0.20.1"),
        ("bpftrace v1.0", "1.0"),
    ]:
        monkeypatch.setenv("PATH", _fake_bpftrace(tmp_path, f'echo "{printed}"'))
        assert bpftrace_version() == (version, None), printed


@pytest.mark.bcc
def test_run_json_emits_snapshots_then_the_final_state() -> None:
    result = agent("run", "syscalls", "--duration", "1s", "--interval", "500ms", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0] == {**events[0], "type": "state", "state": "running"}
    assert [e["final"] for e in events if e["type"] == "snapshot"][-1] is True
    assert events[-1]["state"] == "succeeded"


@pytest.mark.bcc
def test_run_human_output_is_a_table() -> None:
    result = agent("run", "syscalls", "--duration", "1s", "--pid", str(os.getpid()))
    assert result.returncode == 0, result.stderr
    assert "final (cumulative)" in result.stdout
    assert "SYSCALL" in result.stdout and "COUNT" in result.stdout
