"""bpftrace on hosts, with real agents: each reports whether it can run bpftrace and why not,
`hosts show` and the API say so, and a job goes only where it can run; elsewhere its run is
`unsupported` with the agent's own reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.controller.conftest import Agents, RecordingDispatcher, Tokens
from tests.controller.console.conftest import sign_in
from tests.controller.console.dom import parse

pytestmark = pytest.mark.bcc

SCRIPT = "tracepoint:syscalls:sys_enter_getppid { @[comm] = count(); }"
WITH, WITHOUT, OFF = "bpft-with", "bpft-without", "bpft-off"


def _installed_version() -> str:
    out = subprocess.run(["bpftrace", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1].removeprefix("v")


def _path_without_bpftrace(directory: Path) -> str:
    """This machine's PATH with every bpftrace left out: links to all else in its directories."""
    directory.mkdir(exist_ok=True)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            link = directory / name
            if not name.startswith("bpftrace") and not link.exists():
                link.symlink_to(Path(folder) / name)
    return str(directory)


@pytest.fixture(scope="module")
def hosts(agent: Agents, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    bare = _path_without_bpftrace(tmp_path_factory.mktemp("path") / "bin")
    assert shutil.which("bpftrace", path=bare) is None
    started = [
        agent.start(WITH, wait=False, allow_bpftrace=True),
        agent.start(WITHOUT, wait=False, allow_bpftrace=True, env={"PATH": bare}),
        agent.start(OFF, wait=False),
    ]
    return {a.host: agent.wait_online(a) for a in started}


def _program(host: dict[str, Any], name: str) -> dict[str, Any]:
    (support,) = [p for p in host["capabilities"]["programs"] if p["program"] == name]
    return support  # type: ignore[no-any-return]


def test_each_agent_reports_bpftrace_as_it_finds_it(hosts: dict[str, dict[str, Any]]) -> None:
    with_caps = hosts[WITH]["capabilities"]
    assert with_caps["bpftrace_version"] == _installed_version()
    assert with_caps["features"]["bpftrace"] is True
    assert _program(hosts[WITH], "bpftrace")["supported"] is True

    without = hosts[WITHOUT]["capabilities"]
    assert without["bpftrace_version"] is None and without["features"]["bpftrace"] is False
    reason = "no bpftrace on PATH (apt-get install bpftrace)"
    assert without["feature_errors"]["bpftrace"] == reason
    assert reason in _program(hosts[WITHOUT], "bpftrace")["reason"]
    # The rest of the host is unaffected: its catalog programs still run.
    assert _program(hosts[WITHOUT], "syscalls")["supported"] is True

    off = hosts[OFF]["capabilities"]
    assert off["features"]["bpftrace"] is True  # installed, but this agent does not allow it
    assert "allow_bpftrace is off" in _program(hosts[OFF], "bpftrace")["reason"]


def test_hosts_show_names_the_version_and_why_not(
    hosts: dict[str, dict[str, Any]],
    client: TestClient,
    tokens: Tokens,
    cli_for: Callable[[TestClient, str], Callable[..., tuple[int, str, str]]],
) -> None:
    cli = cli_for(client, tokens.token("viewer"))
    code, out, err = cli("hosts", "show", WITH)
    assert code == 0, err
    assert _fact(out, "bpftrace") == _installed_version(), out
    code, out, err = cli("hosts", "show", WITHOUT)
    assert code == 0, err
    assert _fact(out, "bpftrace") == "-", out
    assert "no bpftrace (no bpftrace on PATH (apt-get install bpftrace))" in _fact(out, "features")
    assert "bpftrace (needs bpftrace, which this host lacks" in _fact(out, "unsupported"), out


def _fact(out: str, label: str) -> str:
    """The value on `hosts show`'s line for `label`."""
    for line in out.splitlines():
        name, _, value = line.strip().partition(" ")
        if name.rstrip(":") == label:
            return value.strip()
    raise AssertionError(f"no {label!r} line in:\n{out}")


def test_a_bpftrace_job_is_unsupported_where_it_cannot_run_and_sent_where_it_can(
    hosts: dict[str, dict[str, Any]],
    client: TestClient,
    tokens: Tokens,
    dispatcher: RecordingDispatcher,
) -> None:
    admin = tokens.headers("admin")
    sent = len(dispatcher.sent)
    body = {
        "program": "bpftrace",
        "params": {"script": SCRIPT},
        "duration_s": 1,
        "targets": {"hosts": [WITH, WITHOUT, OFF]},
    }
    answer = client.post("/v1/jobs", json=body, headers=admin)
    assert answer.status_code == 201, answer.text
    runs = {r["host"]: r for r in answer.json()["runs"]}
    assert runs[WITHOUT]["state"] == "unsupported"
    assert "no bpftrace on PATH (apt-get install bpftrace)" in runs[WITHOUT]["reason"]
    assert runs[OFF]["state"] == "unsupported"
    assert "allow_bpftrace is off" in runs[OFF]["reason"]
    assert runs[WITH]["state"] != "unsupported"
    assert [host for host, _ in dispatcher.sent[sent:]] == [WITH]


def test_the_console_host_page_shows_the_version_and_why_not(
    hosts: dict[str, dict[str, Any]], app: FastAPI, tokens: Tokens
) -> None:
    with TestClient(app, base_url="http://testserver") as browser:
        sign_in(browser, tokens.token("viewer"))
        page = parse(browser.get(f"/hosts/{WITH}").text)
        assert page.one(id="bpftrace-version").text.strip() == _installed_version()
        page = parse(browser.get(f"/hosts/{WITHOUT}").text)
        assert page.one(id="bpftrace-version").text.strip() == "—"
        row = page.one("tr", **{"data-feature": "bpftrace"}).text
        assert "no bpftrace on PATH (apt-get install bpftrace)" in row
