"""`fleettrace jobs submit bpftrace --script TEXT | --file F [--keys K]` and `schedules create
bpftrace`: the script reaches `params.script` exactly; a missing, unreadable or too-large file
is one line, a non-zero exit and nothing sent; results are shown side by side like any program.

The API is the real app (SQLite); its dispatcher is test_cli_client's stub playing agents that
answer at once through the real ingest, here with the counter table a bpftrace `@[comm] =
count()` map becomes. The real bpftrace runs in lane c's end-to-end tests.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.cli.common import SCRIPT_LINES
from node_agent.bpftrace.script import MAX_SCRIPT
from node_agent.kinds.counter_table import CounterTable, KeyField
from node_agent.protocol import RunState, StateChange, StreamEnvelope, TraceRequest
from tests.controller.support import snapshot
from tests.controller.test_cli_client import AgentStub, cli_app, make_token  # noqa: F401

Run = Callable[..., tuple[int, str, str]]
SCRIPT = "tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }"
MULTI = """// per process
tracepoint:syscalls:sys_enter_openat
{
  @[comm] = count();
}
"""


class BpftraceStub(AgentStub):
    """Hosts in `finish` answer with `@` as a table of counts by comm."""

    def send(self, *, host: str, request: TraceRequest) -> None:
        self.sent.append((host, request))
        if host not in self.finish:
            return
        counts = self.rows.get(host, {})
        table = CounterTable(
            name="@",
            key_fields=[KeyField(name="comm")],
            rows=[([k], [v]) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])],
            total_rows=len(counts),
        )
        events: list[Any] = [
            StateChange(run_id=request.run_id, state=RunState.running),
            snapshot(request.run_id, 0, [table], final=True),
            StateChange(run_id=request.run_id, state=RunState.succeeded),
        ]
        self.apply(*(StreamEnvelope(host=host, job_id=request.job_id, event=e) for e in events))


@pytest.fixture
def stub() -> BpftraceStub:
    return BpftraceStub()


@pytest.fixture
def http(cli_app: FastAPI) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(cli_app) as client:
        yield client


@pytest.fixture
def run(cli_for: Callable[[TestClient, str], Run], http: TestClient, cli_app: FastAPI) -> Run:  # noqa: F811
    """`fleettrace ARGS...` as an admin, after adding hosts web-1 and web-2."""
    call = cli_for(http, make_token(cli_app, "admin"))
    for name in ("web-1", "web-2"):
        assert call("hosts", "add", name)[0] == 0
    return call


def _one_line_error(code: int, out: str, err: str, needle: str) -> None:
    assert code != 0 and out == "", (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("fleettrace: error: "), err
    assert needle in err, err


def test_script_goes_to_params_script_exactly(run: Run, stub: BpftraceStub) -> None:
    code, _, err = run(
        "jobs", "submit", "bpftrace", "--script", SCRIPT, "--keys", "comm",
        "--hosts", "web-1", "--duration", "30s",
    )  # fmt: skip
    assert code == 0, err
    ((host, request),) = stub.sent
    assert host == "web-1" and request.program == "bpftrace"
    assert request.params == {"script": SCRIPT, "keys": "comm"}
    assert request.duration_s == 30


def test_file_is_sent_as_written_and_shown_line_by_line(
    run: Run, stub: BpftraceStub, tmp_path: Path
) -> None:
    path = tmp_path / "opens.bt"
    path.write_text(MULTI)
    code, out, err = run("jobs", "submit", "bpftrace", "--file", str(path), "--all",
                         "--duration", "5s", "--json")  # fmt: skip
    assert code == 0, err
    assert {r.params["script"] for _, r in stub.sent} == {MULTI}  # newlines and all
    job_id = json.loads(out)["id"]
    code, out, err = run("jobs", "show", job_id)
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("script:"))
    assert [line[10:] for line in lines[start : start + 5]] == MULTI.splitlines()


def test_a_long_script_is_shown_cut(run: Run, stub: BpftraceStub) -> None:
    script = "\n".join(f"// line {n}" for n in range(SCRIPT_LINES + 15)) + "\n" + SCRIPT
    code, out, err = run("jobs", "submit", "bpftrace", "--script", script, "--all",
                         "--duration", "5s", "--json")  # fmt: skip
    assert code == 0, err
    code, out, err = run("jobs", "show", json.loads(out)["id"])
    assert "... 16 more lines" in out and "line 39" in out and "line 40" not in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--file", "/nonexistent/x.bt"], "--file: cannot read /nonexistent/x.bt: No such file"),
        (["--file", "/"], "--file: cannot read /: Is a directory"),
        (["--file", "/dev/zero"], f"above the limit of {MAX_SCRIPT:,}"),
        (["--script", "x" * (MAX_SCRIPT + 1)], f"{MAX_SCRIPT + 1:,} characters"),
        (["--script", SCRIPT, "--file", "/etc/hostname"], "not allowed with argument"),
        ([], "bpftrace needs --script TEXT or --file F"),
        (["--script", SCRIPT, "--param", f"script={SCRIPT}"], "give the script once"),
    ],
    ids=["missing", "a directory", "endless", "too large", "both", "neither", "twice"],
)
def test_bad_script_input_is_one_line_and_nothing_is_sent(
    run: Run, stub: BpftraceStub, extra: list[str], needle: str
) -> None:
    code, out, err = run("jobs", "submit", "bpftrace", "--all", "--duration", "5s", *extra)
    _one_line_error(code, out, err, needle)
    assert stub.sent == []


def test_a_file_that_is_not_text_is_one_line(run: Run, stub: BpftraceStub, tmp_path: Path) -> None:
    path = tmp_path / "binary.bt"
    path.write_bytes(b"\x7fELF\xff\xfe\x00")
    code, out, err = run("jobs", "submit", "bpftrace", "--file", str(path), "--all",
                         "--duration", "5s")  # fmt: skip
    _one_line_error(code, out, err, "is not UTF-8 text")
    assert stub.sent == []


def test_the_script_flags_are_for_bpftrace_only(run: Run, stub: BpftraceStub) -> None:
    code, out, err = run("jobs", "submit", "syscalls", "--script", SCRIPT, "--all",
                         "--duration", "5s")  # fmt: skip
    _one_line_error(code, out, err, "are for the bpftrace program")
    assert stub.sent == []


def test_refusals_of_the_api_are_one_line(
    cli_for: Callable[[TestClient, str], Run],
    http: TestClient,
    cli_app: FastAPI,  # noqa: F811
    run: Run,
    stub: BpftraceStub,
) -> None:
    code, out, err = run("jobs", "submit", "bpftrace", "--script", "  \n", "--all",
                         "--duration", "5s")  # fmt: skip
    _one_line_error(code, out, err, "params.script")
    operator = cli_for(http, make_token(cli_app, "operator"))
    code, out, err = operator("jobs", "submit", "bpftrace", "--script", SCRIPT, "--all",
                              "--duration", "5s")  # fmt: skip
    _one_line_error(code, out, err, "needs the admin role")
    assert stub.sent == []


def test_wait_shows_the_map_side_by_side_with_hostile_keys_made_safe(
    run: Run, stub: BpftraceStub
) -> None:
    stub.finish = {"web-1", "web-2"}
    stub.rows = {
        "web-1": {"nginx": 40, "bash": 2, "evil\x1b[2J,\nname": 5},
        "web-2": {"nginx": 10, "postgres": 30},
    }
    code, out, err = run("jobs", "submit", "bpftrace", "--script", SCRIPT, "--all",
                         "--duration", "2s", "--wait")  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("@: count per host"))
    assert [line.split() for line in lines[start + 1 : start + 4]] == [
        ["COMM", "web-1", "web-2", "TOTAL"],
        ["nginx", "40", "10", "50"],
        ["postgres", "0", "30", "30"],
    ]
    assert "\x1b" not in out + err
    evil = next(line for line in lines if "evil" in line)
    assert "\\x1b[2J,\\nname" in evil and evil.split()[-3:] == ["5", "0", "5"]


def test_schedules_create_takes_a_bpftrace_script(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "opens.bt"
    path.write_text(MULTI)
    code, out, err = run("schedules", "create", "opens", "bpftrace", "--file", str(path),
                         "--keys", "comm", "--every", "1h", "--duration", "30s",
                         "--all")  # fmt: skip
    assert code == 0, err
    code, out, err = run("schedules", "show", "opens", "--json")
    assert code == 0, err
    template = json.loads(out)["template"]
    assert template["params"] == {"script": MULTI, "keys": "comm"}
    code, out, err = run("schedules", "show", "opens")
    assert "script:    // per process" in out
    code, out, err = run("schedules", "create", "x", "bpftrace", "--every", "1h",
                         "--duration", "30s", "--all", "--file", "/nonexistent")  # fmt: skip
    _one_line_error(code, out, err, "cannot read /nonexistent")


def test_file_dash_reads_the_script_from_stdin(
    run: Run, stub: BpftraceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MULTI.encode())))
    code, _, err = run("jobs", "submit", "bpftrace", "--file", "-", "--all", "--duration", "5s")
    assert code == 0, err
    assert {r.params["script"] for _, r in stub.sent} == {MULTI}


def test_the_report_of_a_bpftrace_job_names_its_map_and_the_odd_host(
    run: Run,
    stub: BpftraceStub,
    cli_app: FastAPI,  # noqa: F811
) -> None:
    for name in ("web-3", "web-4"):
        assert run("hosts", "add", name)[0] == 0
    stub.finish = {"web-1", "web-2", "web-3", "web-4"}
    calls = {"web-1": 100, "web-2": 110, "web-3": 5000, "web-4": 120}
    stub.rows = {host: {"nginx": n, "bash": 10} for host, n in calls.items()}
    code, out, err = run("jobs", "submit", "bpftrace", "--script", SCRIPT, "--all",
                         "--duration", "2s", "--json")  # fmt: skip
    assert code == 0, err
    job_id = json.loads(out)["id"]
    code, out, err = run("report", job_id)
    assert code == 0, err
    assert "## @" in out and "| nginx | 5330 |" in out, out
    outliers = out.split("Outliers", 1)[1].split("## ", 1)[0]
    assert "web-3" in outliers and "@" in outliers, out
