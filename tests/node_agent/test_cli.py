"""fleettrace-agent as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from node_agent.arguments import parse_duration


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
    result = agent("probe")
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
    needs = {p["name"]: set(p["features"]) for p in json.loads(agent("programs", "--json").stdout)}
    for name, program in support.items():
        lacking = {f for f in needs[name] if not caps["features"][f]}
        assert program["supported"] is (not lacking)
        if lacking:
            assert all(f in program["reason"] for f in lacking)


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
