"""`fleettrace-agent run bpftrace` as an operator runs it: bcc-style tables, one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.node_agent.bpftrace.test_run import WORKER


def agent(*args: str, wait: bool = True) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "node_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        proc.wait(timeout=120)
    return proc


def _fail(*args: str) -> tuple[int, list[str]]:
    proc = agent(*args)
    assert proc.stderr is not None
    return proc.returncode, proc.stderr.read().strip().splitlines()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--duration", "1s"], "bpftrace needs --script TEXT or --file F"),
        (["--duration", "1s", "--script", 'BEGIN { system("id"); }'], "system() is not allowed"),
        (["--duration", "1s", "--script", "BEGIN { }", "--keys", "@=a b"], "params.keys"),
        (["--duration", "1s", "--file", "/nonexistent.bt"], "--file: cannot read"),
        (["--duration", "1s", "--script", "x", "--file", "y"], "not allowed with argument"),
    ],
)
def test_bad_bpftrace_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    code, lines = _fail("run", "bpftrace", "--allow-bpftrace", *args)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("fleettrace-agent: error:") and needle in lines[0]


def test_bpftrace_needs_the_operators_allow() -> None:
    code, lines = _fail("run", "bpftrace", "--duration", "1s", "--script", "BEGIN { }")
    assert code == 2 and lines == [
        "fleettrace-agent: error: bpftrace scripts run as root: add --allow-bpftrace to run one"
    ]


def test_script_flags_belong_to_bpftrace_only() -> None:
    code, lines = _fail("run", "syscalls", "--duration", "1s", "--script", "BEGIN { }")
    assert code == 2 and lines == [
        "fleettrace-agent: error: --script, --file and --keys are for the bpftrace program"
    ]


@pytest.mark.root
@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="needs bpftrace")
def test_a_script_that_does_not_parse_exits_1_naming_its_line() -> None:
    code, lines = _fail(
        "run",
        "bpftrace",
        "--allow-bpftrace",
        "--duration",
        "1s",
        "--script",
        "// c\nBEGIN { @x = 1 +; }",
    )
    assert code == 1
    assert lines[-3:] == [
        "fleettrace-agent: failed: bpftrace: line 2: syntax error, unexpected ;"
        " (in: BEGIN { @x = 1 +; })",
        "line 2: syntax error, unexpected ;",
        "  2 | BEGIN { @x = 1 +; }",
    ]


@pytest.mark.root
@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="needs bpftrace")
def test_a_script_file_prints_its_tables(tmp_path: Path) -> None:
    script = tmp_path / "count.bt"
    script.write_text("tracepoint:syscalls:sys_enter_getppid { @[comm, pid] = count(); }\n")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "ft-cli-bt"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        proc = agent(
            "run",
            "bpftrace",
            "--allow-bpftrace",
            "--duration",
            "3s",
            "--file",
            str(script),
            "--keys",
            "name,pid",
            "--pid",
            str(worker.pid),
            "--overhead-budget",
            "400",  # a shared machine's syscall storms must not stop it
            wait=False,
        )
        assert proc.stderr is not None and proc.stdout is not None
        assert proc.stderr.readline().startswith("Tracing bpftrace scoped by pid for 3s")
        time.sleep(0.2)
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write("19\n")
        worker.stdin.flush()
        assert worker.stdout.readline() == "done\n"
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        rows = [line.split() for line in out.splitlines()]
        assert ["NAME", "PID", "COUNT"] in rows
        assert ["ft-cli-bt", str(worker.pid), "19"] in rows
    finally:
        worker.kill()
        worker.wait()
