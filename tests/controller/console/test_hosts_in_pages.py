"""Hosts in: adding a host (each error next to its field, as the API words it), bootstrapping a
selection into a batch whose page shows each host's steps, uninstalling, and what a viewer
may not do. The runs go through the app's real queue; the SSH side is bootstrap's fake machine
(a real SSH bootstrap in a browser is test_browser's)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.bootstrap.batch import execute_batch
from controller.bootstrap.models import BootstrapRun, RunKind
from controller.bootstrap.runner import Executor, step_names
from controller.db import session_scope, utcnow
from controller.hosts import service as hosts_service
from controller.hosts.identity import Identities
from controller.hosts.models import Host, HostCreate
from controller.settings import Settings
from tests.controller.bootstrap_fakes import FakeArtifacts, FakeHost, connector
from tests.controller.conftest import Tokens
from tests.controller.console.dom import Node, parse
from tests.controller.support import FIRST_BOOTSTRAP_STEPS

Browser = Callable[[str], tuple[TestClient, str]]
FINGERPRINT = "SHA256:" + "C" * 43
BATCH_URL = re.compile(r"^/hosts-in/batches/([0-9a-f-]{36})$")
RUN_URL = re.compile(r"^/hosts-in/runs/([0-9a-f-]{36})$")


def add_form(**fields: str) -> dict[str, str]:
    return {
        "name": "",
        "address": "",
        "labels": "",
        "ssh_user": "",
        "ssh_port": "",
        "host_key_fingerprint": "",
        "cgroup": "",
        **fields,
    }


def field_errors(page: Node) -> dict[str, str]:
    return {p.attrs["data-field"]: p.text for p in page.all("p", "field-error")}


def register(sessions: sessionmaker[Session], *names: str, address: bool = True) -> None:
    with session_scope(sessions) as session:
        for name in names:
            hosts_service.create(
                session=session,
                host_in=HostCreate(
                    name=name, address=f"{name}.test" if address else None, labels={"lane": "h"}
                ),
            )


def test_an_admin_adds_a_host_and_sees_its_join_command_once(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    client, csrf = browser("admin")
    form = parse(client.get("/hosts-in").text).one("form", id="add-host")
    assert {i.attrs["name"] for i in form.all("input")} >= {*add_form(), "trust_on_first_use"}
    got = client.post(
        "/hosts-in/hosts",
        data={
            "csrf": csrf,
            **add_form(
                name="added-1",
                address="192.0.2.7",
                labels="role=web, dc=eu",
                ssh_user="deploy",
                ssh_port="2222",
                host_key_fingerprint=FINGERPRINT,
                cgroup="fleet/added-1",
            ),
        },
    )
    assert got.status_code == 201, got.text
    command = parse(got.text).one(id="join-command").text
    assert "fleettrace-agent worker --host added-1" in command
    assert "FLEETTRACE_REDIS_URL=" in command and "ft-host-added-1" in command
    with sessions() as session:
        host = hosts_service.get(session=session, name="added-1")
        assert host is not None
        assert host.labels == {"role": "web", "dc": "eu"}
        assert (host.address, host.ssh_user, host.ssh_port) == ("192.0.2.7", "deploy", 2222)
        assert (host.host_key_fingerprint, host.cgroup) == (FINGERPRINT, "fleet/added-1")
        assert host.trust_on_first_use is False and host.agent_secret_sha256
    tofu = client.post(
        "/hosts-in/hosts",
        data={"csrf": csrf, **add_form(name="added-2", trust_on_first_use="on")},
    )
    assert tofu.status_code == 201
    with sessions() as session:
        host = hosts_service.get(session=session, name="added-2")
        assert host is not None and host.trust_on_first_use and host.ssh_port == 22


# field -> (form values, the status, a piece of the message the API gives for the same body)
ADD_ERRORS: dict[str, tuple[dict[str, str], int, str]] = {
    "missing name": ({"address": "x.test"}, 422, "Field required"),
    "bad name": ({"name": "-dash"}, 422, "String should match pattern"),
    "name taken": ({"name": "taken-1"}, 409, "host 'taken-1' exists"),
    "control char in address": ({"name": "e-1", "address": "a\x01b"}, 422, "should match"),
    "labels without =": ({"name": "e-2", "labels": "role"}, 422, "bad 'role', want k=v"),
    "bad label value": ({"name": "e-3", "labels": "role=a b"}, 422, "bad 'role=a b'"),
    "ssh user": ({"name": "e-4", "ssh_user": "Root!"}, 422, "String should match pattern"),
    "port not a number": ({"name": "e-5", "ssh_port": "ssh"}, 422, "valid integer"),
    "port too big": ({"name": "e-6", "ssh_port": "70000"}, 422, "less than or equal to 65535"),
    "fingerprint": ({"name": "e-7", "host_key_fingerprint": "MD5:aa"}, 422, "should match"),
    "cgroup too long": ({"name": "e-8", "cgroup": "c" * 300}, 422, "at most 255 characters"),
}
FIELD = {
    "missing name": "name",
    "bad name": "name",
    "name taken": "name",
    "control char in address": "address",
    "labels without =": "labels",
    "bad label value": "labels",
    "ssh user": "ssh_user",
    "port not a number": "ssh_port",
    "port too big": "ssh_port",
    "fingerprint": "host_key_fingerprint",
    "cgroup too long": "cgroup",
}


@pytest.mark.parametrize("case", sorted(ADD_ERRORS))
def test_each_add_host_error_is_shown_next_to_its_field_with_the_values_kept(
    browser: Browser, sessions: sessionmaker[Session], tokens: Tokens, case: str
) -> None:
    if case == "name taken":
        with session_scope(sessions) as session:
            if hosts_service.get(session=session, name="taken-1") is None:
                hosts_service.create(session=session, host_in=HostCreate(name="taken-1"))
    values, status, message = ADD_ERRORS[case]
    client, csrf = browser("admin")
    sent = add_form(**{"labels": "team=ops", "cgroup": "fleet/kept", **values})
    got = client.post("/hosts-in/hosts", data={"csrf": csrf, **sent})
    assert got.status_code == status, got.text[:300]
    page = parse(got.text)
    errors = field_errors(page)
    assert list(errors) == [FIELD[case]], errors
    assert message in errors[FIELD[case]]
    form = page.one("form", id="add-host")
    for name, value in sent.items():
        assert form.one("input", name=name).attrs["value"] == value.strip(), name
    with sessions() as session:
        names = set(session.scalars(select(Host.name)))
    assert sent["name"] not in names or case == "name taken"
    # The API words the same body's error the same way (labels as the API's selector does).
    if FIELD[case] != "labels":
        body: dict[str, Any] = {k: v for k, v in sent.items() if v and k != "labels"}
        api = client.post(
            "/v1/hosts", json=body, headers={"Authorization": f"Bearer {tokens.token('admin')}"}
        )
        assert api.status_code == status
        assert message in api.text


def test_redis_away_when_adding_a_host_is_said_above_the_form(
    app: FastAPI, browser: Browser, sessions: sessionmaker[Session]
) -> None:
    client, csrf = browser("admin")
    kept = app.state.identities
    app.state.identities = Identities("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0")
    try:
        got = client.post("/hosts-in/hosts", data={"csrf": csrf, **add_form(name="unlucky-1")})
    finally:
        app.state.identities = kept
    assert got.status_code == 503
    page = parse(got.text)
    assert "Redis unavailable for unlucky-1's identity" in page.one(id="add-host-error").text
    assert not field_errors(page)
    assert page.one("input", name="name").attrs["value"] == "unlucky-1"


def test_a_viewer_and_an_operator_get_no_controls_and_their_posts_are_refused(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    register(sessions, "guarded-1")
    for role in ("viewer", "operator"):
        client, csrf = browser(role)
        page = parse(client.get("/hosts-in").text)
        assert page.has("tr", data_host="guarded-1")
        for form in ("add-host", "bootstrap", "uninstall"):
            assert not page.has("form", id=form), (role, form)
        assert not page.has("input", name="host")
        host_page = parse(client.get("/hosts/guarded-1").text)
        assert not host_page.has("form", action="/hosts-in/uninstall")
        for path, data in (
            ("/hosts-in/hosts", add_form(name="forged-1")),
            ("/hosts-in/bootstrap", {"host": "guarded-1"}),
            ("/hosts-in/uninstall", {"host": "guarded-1"}),
        ):
            got = client.post(path, data={"csrf": csrf, **data})
            assert got.status_code == 403 and "admin role" in got.text, (role, path)
    with sessions() as session:
        assert hosts_service.get(session=session, name="forged-1") is None
        assert not session.scalars(
            select(BootstrapRun).where(BootstrapRun.host_name == "guarded-1")
        ).all()


def executor(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path, names: list[str]
) -> tuple[Executor, dict[str, FakeHost]]:
    """Bootstrap's runner on fake machines that heartbeat when their agent starts."""
    machines: dict[str, FakeHost] = {}

    def beat(name: str) -> None:
        with session_scope(sessions) as session:
            host = hosts_service.get(session=session, name=name)
            assert host is not None
            host.last_heartbeat = utcnow()
            host.agent_version = "0.1.0"
            # A fresh probe, newer than the start: what verify waits for.
            host.capabilities = {"kernel_release": "6.1.0", "probed_at": time.time()}

    for name in names:
        machine = FakeHost()
        machine.on_start = lambda name=name: beat(name)  # type: ignore[misc]
        machines[f"{name}.test"] = machine
    (tmp_path / "bundle").mkdir()
    artifacts = FakeArtifacts(tmp_path / "bundle")
    return Executor(sessions, settings, artifacts, connector(machines)), machines


def progress_of(page: Node) -> dict[str, tuple[str, dict[str, str]]]:
    """host -> (run state, step -> status)."""
    return {
        row.attrs["data-host"]: (
            _run_state(row),
            {c.attrs["data-step"]: c.text for c in row.all("td", "step")},
        )
        for row in page.one(id="progress").all("tr")
        if "data-host" in row.attrs
    }


def _run_state(row: Node) -> str:
    cells = [c for c in row.all("td", "state") if "step" not in c.classes()]
    assert len(cells) == 1
    return cells[0].text


def test_bootstrapping_a_selection_makes_a_batch_whose_page_shows_each_step(
    app: FastAPI,
    browser: Browser,
    sessions: sessionmaker[Session],
    settings: Settings,
    tmp_path: Path,
) -> None:
    register(sessions, "boot-1", "boot-2", "boot-3")
    client, csrf = browser("admin")
    page = parse(client.get("/hosts-in").text)
    boxes = {i.attrs["value"] for i in page.one("form", id="bootstrap").all("input", name="host")}
    assert {"boot-1", "boot-2", "boot-3"} <= boxes
    got = client.post(
        "/hosts-in/bootstrap",
        data={"csrf": csrf, "host": ["boot-1", "boot-2"], "parallel": "2", "max_failures": ""},
        follow_redirects=False,
    )
    assert got.status_code == 303, got.text[:300]
    found = BATCH_URL.match(got.headers["location"])
    assert found, got.headers["location"]
    batch_id = found.group(1)

    batch = client.get(got.headers["location"])
    assert batch.status_code == 200
    shown = parse(batch.text)
    section = shown.one(id="progress")
    assert section.attrs["data-final"] == "false"
    assert section.attrs["data-progress"] == f"/hosts-in/batches/{batch_id}/progress"
    assert shown.has("script", src="/static/bootstrap.js")
    assert shown.one(id="about").text.startswith("2 hosts, 2 at once; started by test-admin at")
    steps = step_names(RunKind.bootstrap)
    pending = dict.fromkeys(steps, "pending")
    assert progress_of(shown) == {"boot-1": ("pending", pending), "boot-2": ("pending", pending)}

    run, machines = executor(sessions, settings, tmp_path, ["boot-1", "boot-2"])
    machines["boot-2.test"].facts["python"] = "3.9.2"
    execute_batch(batch_id, run)

    fragment = client.get(f"/hosts-in/batches/{batch_id}/progress")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text, "a fragment, not a page"
    now = parse(fragment.text)
    assert now.one(id="progress").attrs["data-final"] == "true"
    states = progress_of(now)
    assert states["boot-1"] == ("succeeded", FIRST_BOOTSTRAP_STEPS)
    assert states["boot-2"][0] == "failed"
    assert states["boot-2"][1]["preflight"] == "failed"
    assert set(list(states["boot-2"][1].values())[1:]) == {"skipped"}
    failed = now.one("tr", data_host="boot-2").one("td", data_step="preflight")
    assert "3.9.2" in failed.attrs["title"] and "too old" in failed.attrs["title"]
    hosts_in = parse(client.get("/hosts-in").text)
    last = hosts_in.one("tr", data_host="boot-1").text
    assert "bootstrap" in last and "succeeded" in last


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({}, 422, "choose at least one host"),
        ({"host": ["nowhere-1"]}, 422, "no such hosts: nowhere-1"),
        ({"host": ["noaddr-1"]}, 422, "no address to connect to: noaddr-1"),
        ({"host": ["noaddr-1"], "parallel": "0"}, 422, "greater than or equal to 1"),
        ({"host": ["<b>x</b>"]}, 422, "String should match pattern"),
    ],
)
def test_a_bootstrap_that_cannot_start_says_why_on_the_form(
    browser: Browser,
    sessions: sessionmaker[Session],
    data: dict[str, Any],
    status: int,
    message: str,
) -> None:
    with sessions() as session:
        known = hosts_service.get(session=session, name="noaddr-1") is not None
    if not known:
        register(sessions, "noaddr-1", address=False)
    client, csrf = browser("admin")
    got = client.post("/hosts-in/bootstrap", data={"csrf": csrf, **data}, follow_redirects=False)
    assert got.status_code == status, got.text[:300]
    errors = field_errors(parse(got.text))
    field = "parallel" if "parallel" in data else "host"
    assert message in errors[field], errors
    assert "<b>x" not in got.text
    chosen = {
        i.attrs["value"]
        for i in parse(got.text).one("form", id="bootstrap").all("input", name="host")
        if "checked" in i.attrs
    }
    assert chosen == set(data.get("host", [])) & {"noaddr-1"}, "the selection is kept"


def test_a_host_already_bootstrapping_is_refused_and_uninstall_has_a_live_page(
    browser: Browser, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    register(sessions, "busy-1")
    client, csrf = browser("admin")
    first = client.post(
        "/hosts-in/bootstrap", data={"csrf": csrf, "host": "busy-1"}, follow_redirects=False
    )
    assert first.status_code == 303
    again = client.post("/hosts-in/bootstrap", data={"csrf": csrf, "host": "busy-1"})
    assert again.status_code == 409
    assert "already under way on busy-1" in field_errors(parse(again.text))["host"]
    busy = client.post("/hosts-in/uninstall", data={"csrf": csrf, "host": "busy-1"})
    assert busy.status_code == 409
    assert "already under way" in field_errors(parse(busy.text))["host"]

    batch_id = BATCH_URL.match(first.headers["location"])
    assert batch_id
    run, _ = executor(sessions, settings, tmp_path, ["busy-1"])
    execute_batch(batch_id.group(1), run)

    page = parse(client.get("/hosts-in").text)
    uninstall = page.one("form", id="uninstall")
    assert uninstall.attrs["data-confirm"]
    assert "busy-1" in {o.text for o in uninstall.all("option")}
    done = client.post(
        "/hosts-in/uninstall", data={"csrf": csrf, "host": "busy-1"}, follow_redirects=False
    )
    assert done.status_code == 303
    found = RUN_URL.match(done.headers["location"])
    assert found, done.headers["location"]
    shown = parse(client.get(done.headers["location"]).text)
    assert shown.one("h1").text == "Uninstall of busy-1"
    assert shown.one(id="about").text.startswith("started by test-admin at")
    steps = progress_of(shown)["busy-1"][1]
    assert list(steps) == step_names(RunKind.uninstall)
    assert shown.one(id="progress").attrs["data-progress"] == (
        f"/hosts-in/runs/{found.group(1)}/progress"
    )
    missing = client.post("/hosts-in/uninstall", data={"csrf": csrf, "host": "nobody-1"})
    assert missing.status_code == 404
    assert "no host 'nobody-1'" in field_errors(parse(missing.text))["host"]


def test_unknown_batches_and_runs_are_404_pages(browser: Browser) -> None:
    client, _ = browser("viewer")
    for path in (
        "/hosts-in/batches/00000000-0000-0000-0000-000000000000",
        "/hosts-in/batches/nope/progress",
        "/hosts-in/runs/nope",
        "/hosts-in/runs/<script>/progress",
    ):
        got = client.get(path)
        assert got.status_code == 404, path
        assert got.headers["content-type"].startswith("text/html")
        assert "<script>" not in got.text.split("<main>")[1]
