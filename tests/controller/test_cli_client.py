"""The operator CLI's client commands: flags, requests, one-line errors and exit codes.

The API is the real app on SQLite through FastAPI's TestClient. Its dispatcher is a stub that
plays an agent finishing at once through the real ingest code: fine for the CLI's own tests,
never evidence that traces work (the end-to-end tests run real agents).
"""

from __future__ import annotations

import importlib
import json
import shlex
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.auth import service as auth_service
from controller.auth.models import Role
from controller.cli.common import DEFAULT_URL, api
from controller.cli.errors import CliError
from controller.cli.follow import Progress
from controller.cli.http import ApiClient, SseEvent, error_line, parse_sse
from controller.cli.jobs import job_body
from controller.cli.main import build_parser
from controller.ingest.consumer import Ingest
from controller.migrate import upgrade
from controller.settings import Settings
from node_agent.protocol import (
    ErrorCode,
    Feature,
    Heartbeat,
    RunState,
    StateChange,
    StreamEnvelope,
    TraceError,
    TraceRequest,
)
from tests.controller.support import authenticates, capabilities, counters, snapshot

Run = Callable[..., tuple[int, str, str]]
# The package exports the function `main` under the module's name.
main_module = importlib.import_module("controller.cli.main")


class AgentStub:
    """Dispatcher stub: `finish` hosts answer at once (running, a final snapshot, succeeded)."""

    def __init__(self) -> None:
        self.sessions: sessionmaker[Session] | None = None
        self.settings: Settings | None = None
        self.finish: set[str] = set()
        self.rows: dict[str, dict[str, int]] = {}
        self.sent: list[tuple[str, TraceRequest]] = []
        self.cancels: list[str] = []

    def send_all(
        self, work: Sequence[tuple[str, TraceRequest]], *, expires_s: float
    ) -> list[tuple[TraceRequest, Exception]]:
        for host, request in work:
            self.send(host=host, request=request)
        return []

    def send(self, *, host: str, request: TraceRequest) -> None:
        self.sent.append((host, request))
        if host not in self.finish:
            return
        table = counters("syscalls", self.rows.get(host, {"read": 1}))
        events: list[Any] = [
            StateChange(run_id=request.run_id, state=RunState.running),
            snapshot(request.run_id, 0, [table], final=True),
            StateChange(run_id=request.run_id, state=RunState.succeeded),
        ]
        self.apply(*(StreamEnvelope(host=host, job_id=request.job_id, event=e) for e in events))

    def request_cancel(self, *, host: str, run_id: str) -> None:
        self.cancels.append(run_id)

    def forget_host(self, *, host: str) -> None:
        pass

    def apply(self, *envelopes: StreamEnvelope) -> None:
        assert self.sessions is not None and self.settings is not None
        ingest = Ingest(self.settings, self.sessions, None)  # type: ignore[arg-type]
        with self.sessions() as session:
            ingest.apply(session, envelopes)
            session.commit()


@pytest.fixture
def stub() -> AgentStub:
    return AgentStub()


@pytest.fixture
def cli_app(tmp_path: Path, stub: AgentStub, redis_url: str) -> Iterator[FastAPI]:
    # Hosts' Redis identities are made in the tests' Redis.
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'cli.db'}", redis_url=redis_url, max_duration_s=600
    )
    upgrade(settings.database_url)
    app = create_app(settings, stub)
    stub.sessions, stub.settings = app.state.sessions, settings
    yield app
    app.state.engine.dispose()


def make_token(app: FastAPI, role: str) -> str:
    with app.state.sessions() as session:
        _, raw = auth_service.create(session=session, name=f"cli-{role}", role=Role(role))
        session.commit()
    return str(raw)


@pytest.fixture
def admin(cli_app: FastAPI) -> str:
    return make_token(cli_app, "admin")


@pytest.fixture
def http(cli_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(cli_app) as client:
        yield client


@pytest.fixture
def run(cli_for: Callable[[TestClient, str], Run], http: TestClient, admin: str) -> Run:
    """`fleettrace ARGS...` as an admin: (code, stdout, stderr)."""
    return cli_for(http, admin)


def beat(stub: AgentStub, host: str) -> None:
    stub.apply(
        StreamEnvelope(
            host=host,
            event=Heartbeat(host=host, agent_version="0.1.0", capabilities=capabilities()),
        )
    )


# -- flags --------------------------------------------------------------------------------------


def test_submit_flags_become_the_job_body() -> None:
    args = build_parser().parse_args(
        [
            *("jobs", "submit", "cpu_profile", "--hosts", "web-1, web-2,"),
            *("--duration", "1m", "--interval", "500ms", "--param", "frequency=99"),
            *("--param", "user=false", "--cgroup", "/svc/app", "--pid", "42"),
        ]
    )
    assert job_body(args) == {
        "program": "cpu_profile",
        "params": {"frequency": "99", "user": "false"},
        "scope": {"cgroup": "/svc/app", "pid": 42},
        "duration_s": 60.0,
        "interval_s": 0.5,
        "targets": {"hosts": ["web-1", "web-2"]},
    }
    argv = ["jobs", "submit", "runqlat", "--selector", "role=web", "--selector", "az=b"]
    selector = build_parser().parse_args([*argv, "--duration", "5"])
    assert job_body(selector)["targets"] == {"selector": {"role": "web", "az": "b"}}
    every = build_parser().parse_args(["jobs", "submit", "runqlat", "--all", "--duration", "5"])
    assert job_body(every)["targets"] == {"all": True}


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["jobs", "submit", "x", "--duration", "3s"], "one of the arguments --hosts --selector"),
        (
            ["jobs", "submit", "x", "--all", "--hosts", "a", "--duration", "3s"],
            "argument --hosts: not allowed with argument --all",
        ),
        (["jobs", "submit", "x", "--all", "--duration", "soon"], "bad duration 'soon'"),
        (["jobs", "submit", "x", "--all", "--duration", "3s", "--param", "nokey"], "bad 'nokey'"),
        (["jobs", "submit", "x", "--hosts", ",", "--duration", "3s"], "no host names in ','"),
        (["jobs", "list", "--state", "done"], "argument --state: invalid choice: 'done'"),
        (["jobs", "results", "j", "--top", "0"], "expected a positive integer, got '0'"),
        (["hosts", "add", "h", "--label", "=x"], "bad '=x' (use key=value)"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    assert main_module.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("fleettrace: error: ") and line in err, err
    assert err.count("\n") == 1, err


def test_url_and_token_come_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETTRACE_URL", raising=False)
    monkeypatch.delenv("FLEETTRACE_TOKEN", raising=False)
    args = build_parser().parse_args(["hosts", "list"])
    with api(args) as client:
        assert client.url == DEFAULT_URL
        assert "Authorization" not in client.headers
    monkeypatch.setenv("FLEETTRACE_URL", "https://10.1.2.3:9000/")
    monkeypatch.setenv("FLEETTRACE_TOKEN", "ft_env")
    with api(args) as client:
        assert client.url == "https://10.1.2.3:9000"
        assert client.headers["Authorization"] == "Bearer ft_env"
    args = build_parser().parse_args(["hosts", "list", "--url", "https://h:1", "--token", "ft_f"])
    with api(args) as client:
        assert (client.url, client.headers["Authorization"]) == ("https://h:1", "Bearer ft_f")


# -- errors from the API -------------------------------------------------------------------------


def test_a_parameter_out_of_bounds_names_the_field(run: Run, stub: AgentStub) -> None:
    run("hosts", "add", "web-1")
    code, out, err = run(
        "jobs", "submit", "cpu_profile", "--hosts", "web-1", "--duration", "2s",
        "--param", "frequency=5000",
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == "fleettrace: error: params.frequency: 5000 is above the maximum 1000\n"
    assert stub.sent == []


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--pid", "0"], "scope.pid: Input should be greater than or equal to 1 (got 0)"),
        (["--hosts", "ghost"], "targets.hosts: unknown hosts: ghost"),
        (["--selector", "role=db"], "targets.selector: no host matches the targets"),
        (["--duration", "1h"], "duration_s: 3600s is above the limit of 600s"),
        (["--param", "bogus=1"], "params.bogus: unknown parameter"),
    ],
)
def test_refused_jobs_are_one_line_naming_the_field(run: Run, argv: list[str], line: str) -> None:
    run("hosts", "add", "web-1")
    base = ["jobs", "submit", "syscalls", "--duration", "2s"]
    if not any(a in argv for a in ("--hosts", "--selector")):
        base += ["--hosts", "web-1"]
    code, _, err = run(*base, *argv)
    assert code == 2
    assert err.startswith(f"fleettrace: error: {line}"), err
    assert err.count("\n") == 1


def test_auth_and_missing_objects_are_exit_2(
    run: Run, cli_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run("jobs", "show", "nope")
    assert (code, err) == (2, "fleettrace: error: no job nope\n")
    code, _, err = run("hosts", "show", "ghost")
    assert (code, err) == (2, "fleettrace: error: no host 'ghost'\n")
    code, _, err = run("hosts", "list", "--token", "ft_wrong")
    assert code == 2
    assert err == (
        "fleettrace: error: unknown or revoked API token (give --token or set FLEETTRACE_TOKEN)\n"
    )
    viewer = make_token(cli_app, "viewer")
    code, _, err = run("hosts", "add", "web-9", "--token", viewer)
    assert (code, err) == (2, "fleettrace: error: this needs the admin role\n")
    monkeypatch.delenv("FLEETTRACE_TOKEN")
    code, _, err = run("jobs", "list")
    assert code == 2
    assert err == (
        "fleettrace: error: an API token is required (give --token or set FLEETTRACE_TOKEN)\n"
    )


def test_server_errors_exit_1() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/hosts":
            return httpx.Response(503, text="<html>upstream down</html>")
        return httpx.Response(500, json={"detail": "database unavailable"})

    transport = httpx.MockTransport(broken)
    client = ApiClient("http://ctl", http=httpx.Client(base_url="http://ctl", transport=transport))
    with pytest.raises(CliError) as caught:
        client.get("/v1/hosts")
    assert (str(caught.value), caught.value.code) == ("HTTP 503 Service Unavailable", 1)
    with pytest.raises(CliError) as caught:
        client.get("/v1/jobs")
    assert (str(caught.value), caught.value.code) == ("database unavailable", 1)


def test_an_unreachable_controller_is_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.
    monkeypatch.setenv("FLEETTRACE_URL", f"http://127.0.0.1:{port}")
    assert main_module.main(["jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"fleettrace: error: cannot reach the controller at http://127.0.0.1:{port}: "
    )
    assert err.count("\n") == 1


def test_error_line_shapes() -> None:
    many = {"detail": [{"loc": ["body", f"f{i}"], "msg": "Field required"} for i in range(5)]}
    assert error_line(422, many) == (
        "f0: Field required; f1: Field required; f2: Field required (and 2 more)"
    )
    pydantic = {
        "detail": [
            {"loc": ["body", "targets"], "msg": "Value error, give exactly one of hosts, selector"}
        ]
    }
    assert error_line(422, pydantic) == "targets: give exactly one of hosts, selector"
    assert error_line(422, {"detail": [{"loc": ["query", "limit"], "msg": "too big"}]}) == (
        "limit: too big"
    )
    assert error_line(404, None) == "HTTP 404 Not Found"
    assert error_line(409, {"detail": "host 'a' exists"}) == "host 'a' exists"


# -- commands against the app ------------------------------------------------------------------


def test_hosts_add_list_show(run: Run, stub: AgentStub) -> None:
    code, out, _ = run("hosts", "add", "web-1", "--address", "10.0.0.2", "--label", "role=web")
    assert code == 0 and "added host web-1 (role=web)" in out
    run("hosts", "add", "db-1", "--label", "role=db")
    beat(stub, "web-1")
    code, out, _ = run("hosts", "list")
    lines = out.splitlines()
    assert code == 0
    header = ["NAME", "STATE", "LABELS", "AGENT", "KERNEL", "HEADERS", "HEARTBEAT"]
    assert lines[0].split() == header
    assert lines[1].split() == ["db-1", "never_seen", "role=db", "-", "-", "-", "never"]
    web = ["web-1", "online", "role=web", "0.1.0", "6.1.0-test", "exact", "0s", "ago"]
    assert lines[2].split() == web
    assert lines[3] == "2 hosts"
    assert "\x1b" not in out
    code, out, _ = run("hosts", "list", "--selector", "role=db", "--json")
    assert [h["name"] for h in json.loads(out)["data"]] == ["db-1"]
    code, out, _ = run("hosts", "show", "web-1")
    assert code == 0
    shown = dict(line.split(":", 1) for line in out.splitlines())
    assert shown["address"].strip() == "10.0.0.2"
    assert shown["kernel"].strip() == "6.1.0-test x86_64"
    assert "cpu_profile" in shown["programs"]


def test_hosts_add_prints_a_join_command_once_and_credential_issues_another(
    run: Run, redis_url: str
) -> None:
    code, out, _ = run("hosts", "add", "web-7")
    assert code == 0, out
    command = next(line.strip() for line in out.splitlines() if "fleettrace-agent worker" in line)
    assert command.endswith("fleettrace-agent worker --host web-7")
    first = shlex.split(command)[0].removeprefix("FLEETTRACE_REDIS_URL=")
    assert urlsplit(first).username == "ft-host-web-7"
    assert urlsplit(first).password != urlsplit(redis_url).password
    assert authenticates(first)
    code, out, _ = run("hosts", "show", "web-7")
    assert urlsplit(first).password not in out
    code, out, _ = run("hosts", "credential", "web-7")
    assert code == 0, out
    second = shlex.split(out.splitlines()[-1].strip())[0].removeprefix("FLEETTRACE_REDIS_URL=")
    assert second != first and authenticates(second) and not authenticates(first)
    code, _, err = run("hosts", "credential", "nope")
    assert code == 2 and err.count("\n") == 1, err


def test_submit_list_show_cancel_results(run: Run, stub: AgentStub) -> None:
    for name in ("web-1", "web-2"):
        run("hosts", "add", name, "--label", "role=web")
    code, out, _ = run(
        "jobs", "submit", "syscalls", "--selector", "role=web", "--duration", "30s", "--json"
    )
    assert code == 0
    job = json.loads(out)
    assert [host for host, _ in stub.sent] == ["web-1", "web-2"]
    code, out, _ = run("jobs", "list", "--state", "pending")
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[:4] == [job["id"], "syscalls", "pending", "0/2"]
    code, out, _ = run("jobs", "show", job["id"])
    assert f"job {job['id']}" in out and "selector role=web" in out
    code, out, _ = run("jobs", "cancel", job["id"])
    assert (code, out) == (0, f"job {job['id']}: cancel requested, now cancelled\n")
    code, out, _ = run("jobs", "results", job["id"])
    assert code == 0
    status = out.splitlines()
    assert status[0] == f"job {job['id']}  syscalls  cancelled  (0 of 2 hosts succeeded)"
    assert status[2].split() == ["web-1", "cancelled", "0", "cancelled", "before", "start"]
    assert status[-1] == "no results yet"


def test_submit_wait_follows_events_then_shows_hosts_side_by_side(
    run: Run, stub: AgentStub
) -> None:
    for name in ("web-1", "web-2"):
        run("hosts", "add", name)
    stub.finish = {"web-1", "web-2"}
    stub.rows = {"web-1": {"read": 10, "write": 3}, "web-2": {"read": 5, "openat": 7}}
    code, out, err = run("jobs", "submit", "syscalls", "--all", "--duration", "2s", "--wait")
    assert code == 0, err
    assert "polling" not in err  # the SSE stream carried it
    # Progress goes to stderr, one line per change when it is not a terminal.
    assert "web-1: running" in err and "web-2: final snapshot" in err
    assert err.rstrip().endswith("succeeded")
    lines = out.splitlines()
    start = lines.index("syscalls: count per host, top 3 of 3 by total")
    assert [line.split() for line in lines[start + 1 : start + 5]] == [
        ["KEY", "web-1", "web-2", "TOTAL"],
        ["read", "10", "5", "15"],
        ["openat", "0", "7", "7"],
        ["write", "3", "0", "3"],
    ]
    assert "\x1b" not in out + err


def test_submit_wait_exits_1_and_names_the_host_that_could_not_run(
    run: Run, stub: AgentStub
) -> None:
    for name in ("web-1", "web-2"):
        run("hosts", "add", name)
    beat(stub, "web-1")
    no_perf = capabilities(without=[Feature.perf_events])
    stub.apply(StreamEnvelope(host="web-2", event=Heartbeat(host="web-2", agent_version="0.1.0",
                                                            capabilities=no_perf)))  # fmt: skip
    stub.finish = {"web-1"}
    code, out, err = run("jobs", "submit", "cpu_profile", "--all", "--duration", "2s", "--wait")
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].endswith("partial  (1 of 2 hosts succeeded)")
    assert lines[3].split()[:2] == ["web-2", "unsupported"]
    assert "needs perf_events, which this host lacks" in lines[3]
    assert "no data from: web-2 unsupported" in lines
    assert ["KEY", "web-1", "TOTAL"] in [line.split() for line in lines]


def test_results_show_a_failed_run_with_its_error(run: Run, stub: AgentStub) -> None:
    for name in ("web-1", "web-2"):
        run("hosts", "add", name)
    stub.finish = {"web-1"}
    code, out, _ = run("jobs", "submit", "syscalls", "--all", "--duration", "2s", "--json")
    job_id = json.loads(out)["id"]
    run_id = next(r.run_id for h, r in stub.sent if h == "web-2")
    error = TraceError(code=ErrorCode.compile_error, message="bpf: unknown type")
    failed = StateChange(run_id=run_id, state=RunState.failed, error=error)
    stub.apply(StreamEnvelope(host="web-2", job_id=job_id, event=failed))
    code, out, _ = run("jobs", "results", job_id)
    assert code == 0
    web2 = next(line for line in out.splitlines() if line.startswith("web-2 "))
    assert web2.split() == ["web-2", "failed", "0", "compile_error:", "bpf:", "unknown", "type"]
    code, out, _ = run("jobs", "show", job_id)
    assert "compile_error: bpf: unknown type" in out
    assert "partial (1 failed, 1 succeeded)" in out


def test_ctrl_c_while_waiting_cancels_and_prints_partial_results(
    run: Run, stub: AgentStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("web-1", "web-2"):
        run("hosts", "add", name)
    stub.finish = {"web-1"}

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("controller.cli.jobs.follow", interrupted)
    code, out, err = run("jobs", "submit", "syscalls", "--all", "--duration", "30s", "--wait")
    assert code == 1
    assert "interrupted: cancelling job" in err
    assert stub.cancels == [r.run_id for h, r in stub.sent if h == "web-2"]
    lines = out.splitlines()
    assert "cancelled" in lines[0]
    assert lines[2].split()[:2] == ["web-1", "succeeded"]
    assert lines[3].split()[:2] == ["web-2", "cancelled"]
    assert any(line.split() == ["read", "1", "1"] for line in lines), out


def test_follow_polls_when_the_event_stream_fails(
    run: Run, stub: AgentStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("hosts", "add", "web-1")
    stub.finish = {"web-1"}

    def no_stream(self: ApiClient, job_id: str, **_: Any) -> Iterator[SseEvent]:
        raise CliError("HTTP 502 Bad Gateway", code=1)
        yield  # a generator, like the real one

    monkeypatch.setattr(ApiClient, "events", no_stream)
    code, out, err = run("jobs", "submit", "syscalls", "--all", "--duration", "2s", "--wait")
    assert code == 0
    assert "live events unavailable (HTTP 502 Bad Gateway); polling instead" in err
    assert "job " in err and "succeeded" in err
    assert "syscalls: count per host" in out


# -- events ---------------------------------------------------------------------------------------


def test_parse_sse_frames() -> None:
    stream = [
        ": keepalive",
        "id: 7",
        "event: state",
        'data: {"host": "a", "state": "running"}',
        "",
        "event: end",
        "data: {}",
        "",
        "data: line one",
        "data: line two",
        "",
        "event: unfinished",
    ]
    assert list(parse_sse(stream)) == [
        SseEvent(id="7", event="state", data={"host": "a", "state": "running"}),
        SseEvent(id="7", event="end", data={}),
        SseEvent(id="7", event="message", data="line one\nline two"),
    ]


def test_progress_follows_states_and_snapshots() -> None:
    now = [100.0]
    job = {
        "id": "j1",
        "program": "runqlat",
        "duration_s": 2,
        "state": "pending",
        "runs": [{"host": "a", "state": "pending"}, {"host": "b", "state": "unsupported",
                                                      "reason": "needs kprobes"}],
    }  # fmt: skip
    progress = Progress(job, clock=lambda: now[0])
    assert progress.hosts["b"].note == "needs kprobes"
    assert progress.apply(SseEvent("1", "state", {"host": "a", "state": "running"})) == (
        "a: running"
    )
    now[0] = 101.0
    assert progress.apply(SseEvent("2", "snapshot", {"host": "a", "seq": 0})) is None
    assert progress.apply(SseEvent("3", "snapshot", {"host": "a", "seq": 1, "final": True})) == (
        "a: final snapshot"
    )
    assert (progress.hosts["a"].snapshots, progress.hosts["a"].updated) == (2, 101.0)
    assert progress.apply(SseEvent("4", "job", {"state": "partial"})) == "job j1: partial"
    assert progress.done and not progress.ended
    polled = {"state": "partial", "runs": [{"host": "a", "state": "succeeded", "snapshots": 2}]}
    assert progress.apply_job(polled) == ["a: succeeded"]


# -- ingest dead-letters ------------------------------------------------------------------------


def test_ingest_dead_letters_lists_them_with_hostile_text_shown_not_obeyed(
    run: Run, cli_app: FastAPI
) -> None:
    from controller.ingest import dead_letters

    code, out, _ = run("ingest", "dead-letters")
    assert (code, out.strip()) == (0, "no dead letters")
    with cli_app.state.sessions() as session:
        for i in range(3):
            dead_letters.record(
                session,
                host="web-2",
                entry_id=f"17-{i}".encode(),
                data=b"\x1b]0;owned\x07",
                reason="unreadable: event: Field required \x1b[2J",
            )
        session.commit()
    code, out, _ = run("ingest", "dead-letters", "--host", "web-2", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "HOST", "ENTRY", "SIZE", "REASON"]
    assert "17-2" in lines[1] and "17-1" in lines[2] and "web-2" in lines[1]
    assert "\x1b" not in out
    assert lines[-1] == "2 dead letters of 3 (--offset, --limit for more)"
    code, out, _ = run("ingest", "dead-letters", "--json", "--host", "web-2")
    assert code == 0 and json.loads(out)["count"] == 3
    code, _, err = run("ingest", "dead-letters", "--limit", "0")
    assert code == 2 and "expected 1..1000" in err
