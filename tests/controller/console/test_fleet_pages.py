"""The Fleet page and a host's page: states, labels, the host x program matrix from the agents'
capability probes, the label filter, a host's recent jobs, and hostile text shown as text."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from controller.bootstrap.models import BootstrapRun, BootstrapStep
from controller.db import session_scope, utcnow
from controller.hosts import service as hosts_service
from controller.hosts.models import Host, HostCreate
from controller.jobs.models import Job, Run, Targets
from node_agent.capabilities import program_support
from node_agent.programs import catalog
from node_agent.protocol import (
    Feature,
    HeadersState,
    Heartbeat,
    HostCapabilities,
    ProgramSupport,
)
from tests.controller.console.dom import Node, parse

Browser = Callable[[str], tuple[TestClient, str]]
FINGERPRINT = "SHA256:" + "A" * 43
OFFERED = "SHA256:" + "B" * 43
NO_SYSCALL_TABLE = "syscall_latency needs bcc's syscall table (bcc.syscall is missing)"
KHEADERS = "the kernel offers /sys/kernel/kheaders.tar.xz; extracted into /var/lib/ft/k"
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def probe_of(
    *,
    lacking: frozenset[Feature] = frozenset(),
    refused: dict[str, str] | None = None,
    kernel: str = "6.1.0-13-amd64",
    headers: tuple[HeadersState, str | None] = (HeadersState.exact, None),
) -> HostCapabilities:
    """A capability probe as an agent with these features reports it (the agent's own rules)."""
    features = {f: f not in lacking for f in Feature}
    programs = [program_support(spec, features) for spec in catalog().values()]
    refused = refused or {}
    programs = [
        ProgramSupport(program=p.program, supported=False, reason=refused[p.program])
        if p.program in refused
        else p
        for p in programs
    ]
    return HostCapabilities(
        kernel_release=kernel,
        arch="x86_64",
        bcc_version="0.26.0",
        headers=headers[0],
        headers_detail=headers[1],
        features=features,
        feature_errors={f: f"{f.value} probe refused" for f in lacking},
        programs=programs,
    )


def add(
    session: Session,
    name: str,
    labels: dict[str, str],
    probe: HostCapabilities | None,
    *,
    seen_ago: timedelta | None = None,
    **fields: object,
) -> Host:
    host = hosts_service.create(
        session=session,
        host_in=HostCreate(name=name, labels=labels, address=f"{name}.test", **fields),  # type: ignore[arg-type]
    )
    if probe is not None:
        beat = Heartbeat(host=name, agent_version="0.1.0", capabilities=probe)
        hosts_service.record_heartbeat(session=session, beat=beat)
        if seen_ago is not None:
            host.last_heartbeat = utcnow() - seen_ago
    return host


def add_job(session: Session, host: str, *, program: str = "syscalls") -> str:
    job_id = str(uuid.uuid4())
    session.add(
        Job(
            id=job_id,
            program=program,
            targets=Targets(hosts=[host]),
            duration_s=5.0,
            state="succeeded",
            runs=[Run(id=str(uuid.uuid4()), host_name=host, state="succeeded")],
        )
    )
    return job_id


@pytest.fixture(scope="module")
def fleet(sessions: sessionmaker[Session]) -> dict[str, str]:
    """web-1 online, web-2 away and lacking perf events, db-1 and db-2 never seen; jobs."""
    with session_scope(sessions) as session:
        add(session, "web-1", {"role": "web", "dc": "eu"}, probe_of())
        web2 = add(
            session,
            "web-2",
            {"role": "web", "dc": "us"},
            probe_of(
                lacking=frozenset({Feature.perf_events}),
                refused={"syscall_latency": NO_SYSCALL_TABLE},
                kernel="5.10.0-26-amd64",
                headers=(HeadersState.kheaders, KHEADERS),
            ),
            seen_ago=timedelta(hours=2),
            ssh_user="deploy",
            ssh_port=2222,
            host_key_fingerprint=FINGERPRINT,
            cgroup="fleet/web-2",
        )
        web2.host_key_rejected = {"fingerprint": OFFERED, "at": utcnow().isoformat()}
        add(session, "db-1", {"role": "db"}, None)
        add(session, "db-2", {"role": "db"}, None)
        jobs = {"web-2": add_job(session, "web-2"), "web-1": add_job(session, "web-1")}
    return jobs


def view(browser: Browser, path: str, **params: str) -> Node:
    """The page as a viewer sees it."""
    client, _ = browser("viewer")
    got = client.get(path, params=params)
    assert got.status_code == 200, got.text[:300]
    return parse(got.text)


def matrix(page: Node) -> dict[tuple[str, str], tuple[str, str]]:
    """(host, program) -> (the cell's text, its title)."""
    table = page.one("table", id="matrix")
    return {
        (row.attrs["data-host"], cell.attrs["data-program"]): (cell.text, cell.attrs["title"])
        for row in table.all("tr")
        if "data-host" in row.attrs
        for cell in row.all("td")
    }


def test_the_fleet_shows_each_state_counts_and_the_matrix(
    browser: Browser, fleet: dict[str, str]
) -> None:
    page = view(browser, "/fleet")
    counts = {s.attrs["data-state"]: s.text for s in page.all("span") if "data-state" in s.attrs}
    assert counts == {"online": "1 online", "offline": "1 offline", "never_seen": "2 never seen"}
    hosts = page.one("table", id="hosts")
    states = {
        r.attrs["data-host"]: r.one("td", "state").text
        for r in hosts.all("tr")
        if "data-host" in r.attrs
    }
    assert states == {
        "db-1": "never seen",
        "db-2": "never seen",
        "web-1": "online",
        "web-2": "offline",
    }
    web2 = hosts.one("tr", data_host="web-2")
    assert "role=web" in web2.text and "dc=us" in web2.text
    assert "5.10.0-26-amd64 x86_64" in web2.text and "0.1.0" in web2.text
    assert "2 h ago" in web2.text and web2.one("td", "num").attrs["title"].endswith("UTC")
    assert hosts.one("tr", data_host="db-1").one("td", "num").text == "—"

    cells = matrix(page)
    programs = list(catalog())
    assert {p for (h, p) in cells if h == "web-1"} == set(programs)
    assert all(cells["web-1", p][0] == "yes" for p in programs)
    assert cells["web-2", "cpu_profile"] == (
        "needs perf_events",
        "needs perf_events, which this host lacks",
    )
    assert cells["web-2", "syscall_latency"] == ("needs bcc's syscall table", NO_SYSCALL_TABLE)
    assert cells["web-2", "syscalls"][0] == "yes"
    assert cells["db-1", "syscalls"][0] == "not probed"


@pytest.mark.parametrize(
    ("selector", "shown"),
    [
        ("role=web", {"web-1", "web-2"}),
        (" role=web , dc=eu ", {"web-1"}),
        ("role=db", {"db-1", "db-2"}),
        ("role=cache", set()),
        ("", {"web-1", "web-2", "db-1", "db-2"}),
    ],
)
def test_the_label_filter_picks_hosts(
    browser: Browser, fleet: dict[str, str], selector: str, shown: set[str]
) -> None:
    client, _ = browser("viewer")
    got = client.get("/fleet", params={"selector": selector})
    assert got.status_code == 200
    page = parse(got.text)
    rows = {r.attrs["data-host"] for r in page.all("tr") if "data-host" in r.attrs}
    assert rows == shown
    assert page.one("input", id="selector").attrs["value"] == selector
    assert not page.has(cls="field-error")
    if not shown:
        assert "No host matches role=cache" in page.text


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("role", "bad 'role', want k=v with a label key and value"),
        ("role=web,=x", "bad '=x', want k=v"),
        ("role=<b>x</b>", "bad 'role=<b>x</b>', want k=v"),
    ],
)
def test_a_bad_selector_is_named_next_to_the_filter(
    browser: Browser, fleet: dict[str, str], selector: str, message: str
) -> None:
    client, _ = browser("viewer")
    got = client.get("/fleet", params={"selector": selector})
    assert got.status_code == 200
    assert "<b>x" not in got.text
    error = parse(got.text).one("p", "field-error", data_field="selector")
    assert message in error.text and "showing every host" in error.text
    rows = {
        r.attrs["data-host"]
        for r in parse(got.text).one("table", id="hosts").all("tr")
        if "data-host" in r.attrs
    }
    assert len(rows) == 4


def test_a_host_page_shows_what_the_api_shows_and_its_jobs(
    browser: Browser, fleet: dict[str, str]
) -> None:
    page = view(browser, "/hosts/web-2")
    assert page.one(id="host-state").text == "offline"
    assert page.one(id="ssh").text == "deploy@web-2.test:2222"
    key = page.one(id="host-key").text
    assert f"REJECTED {OFFERED}" in key and f"pinned: {FINGERPRINT}" in key
    assert "fleet/web-2" in page.text and "5.10.0-26-amd64 x86_64" in page.text
    assert page.one(id="probed").attrs["title"].endswith("UTC")
    headers = page.one(id="headers")
    assert headers.attrs["data-state"] == "kheaders" and headers.text == f"kheaders ({KHEADERS})"
    perf = page.one("tr", data_feature="perf_events").text
    assert "no" in perf and "perf_events probe refused" in perf
    cells = matrix(page)
    assert cells["web-2", "cpu_profile"][0] == "needs perf_events"
    jobs = page.one("table", id="host-jobs")
    rows = [r.attrs["data-job"] for r in jobs.all("tr") if "data-job" in r.attrs]
    assert rows == [fleet["web-2"]], "only jobs that ran on this host"
    assert jobs.one("a").attrs["href"] == f"/jobs/{fleet['web-2']}"
    assert not page.has("form", action="/hosts-in/uninstall"), "a viewer gets no controls"

    never = view(browser, "/hosts/db-1")
    assert "Not reported yet" in never.text and never.one(id="host-key").text == "from known_hosts"
    assert "No job has run here yet." in never.text


def test_an_unknown_host_is_a_404_page(browser: Browser, fleet: dict[str, str]) -> None:
    client, _ = browser("viewer")
    got = client.get("/hosts/nope")
    assert got.status_code == 404
    assert got.headers["content-type"].startswith("text/html")
    assert "no host &#39;nope&#39;" in got.text
    bad = client.get("/hosts/-bad")
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")


def test_what_hosts_say_about_themselves_is_shown_as_text(
    browser: Browser, sessions: sessionmaker[Session], fleet: dict[str, str]
) -> None:
    with session_scope(sessions) as session:
        session.add(
            Host(
                name=HOSTILE,
                labels={HOSTILE: HOSTILE},
                agent_version=HOSTILE,
                capabilities={"kernel_release": HOSTILE, "features": {}, "programs": []},
                last_heartbeat=utcnow(),
            )
        )
        host = add(session, "hostile-2", {"role": "odd"}, None, cgroup="fleet/x")
        host.labels = {HOSTILE: HOSTILE}
        host.capabilities = {
            "kernel_release": HOSTILE,
            "bcc_version": HOSTILE,
            "headers_detail": HOSTILE,
            "features": {"tracepoints": False},
            "feature_errors": {"tracepoints": HOSTILE},
            "programs": [{"program": "syscalls", "supported": False, "reason": HOSTILE}],
        }
        host.agent_version = HOSTILE
        host.host_key_rejected = {"fingerprint": HOSTILE, "at": utcnow().isoformat()}
        add_job(session, "hostile-2")
        run_id = str(uuid.uuid4())
        session.add(
            BootstrapRun(
                id=run_id,
                host_name="hostile-2",
                kind="bootstrap",
                state="failed",
                error=HOSTILE,
                created_at=utcnow(),
                steps=[
                    BootstrapStep(position=0, name="preflight", status="failed", output=HOSTILE)
                ],
            )
        )
    client, _ = browser("viewer")
    for path in ("/fleet", "/hosts/hostile-2", "/hosts-in", f"/hosts-in/runs/{run_id}"):
        got = client.get(path)
        assert got.status_code == 200, path
        assert "<script>alert(1)" not in got.text and "<img src=x" not in got.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in got.text, path
    cell = matrix(parse(client.get("/fleet").text))["hostile-2", "syscalls"]
    assert cell[1] == HOSTILE, "the whole reason, as text, in the title"
    with session_scope(sessions) as session:
        for name in (HOSTILE, "hostile-2"):
            gone = hosts_service.get(session=session, name=name)
            assert gone is not None
            session.delete(gone)


def test_the_fleet_page_asks_the_database_the_same_for_10_or_60_hosts(
    app: FastAPI, browser: Browser, sessions: sessionmaker[Session], fleet: dict[str, str]
) -> None:
    client, _ = browser("viewer")
    statements: list[str] = []

    def note(*args: object) -> None:
        statements.append(str(args[2]))

    def queries() -> int:
        statements.clear()
        event.listen(app.state.engine, "before_cursor_execute", note)
        try:
            assert client.get("/fleet").status_code == 200
        finally:
            event.remove(app.state.engine, "before_cursor_execute", note)
        return len(statements)

    few = queries()
    with session_scope(sessions) as session:
        for i in range(56):
            add(session, f"many-{i:02d}", {"role": "many"}, probe_of())
    try:
        assert queries() == few, statements
        assert sum("FROM hosts" in s for s in statements) == 1
    finally:
        with session_scope(sessions) as session:
            for i in range(56):
                gone = hosts_service.get(session=session, name=f"many-{i:02d}")
                assert gone is not None
                session.delete(gone)
