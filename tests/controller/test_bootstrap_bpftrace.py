"""`hosts bootstrap --with-bpftrace` against a real OpenSSH server in a bare local host: the
packages step finds the distro's bpftrace (the local hosts share this machine's filesystem, so
it is there, and nothing is installed or removed), runs `bpftrace --version` on the host, and
the agent it starts runs bpftrace: its capabilities say so. Bootstrapped again without the
option, the same agent reports bpftrace refused by its own setting. (That a failed install is
one line is tested on the fake host: apt is not to be broken on a shared machine.)"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack import HostSpec, Stack
from tests.controller.sshfleet import ssh_stack, stack_config
from tests.controller.support import step_statuses
from tests.controller.test_bootstrap import _ok
from tests.controller.test_bootstrap import api as api_fixture

api = api_fixture  # test_bootstrap's client fixture, over this module's stack

pytestmark = pytest.mark.bcc

HOST = "bt-1"
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    hosts = (HostSpec(HOST, {"role": "web"}, "web-moderate"),)
    config = stack_config(tmp_path_factory.mktemp("bootbt"), hosts, "x", subnet=206)
    settings = {"FLEETTRACE_SSH_USE_AGENT": "false", "FLEETTRACE_BOOTSTRAP_VERIFY_TIMEOUT_S": "60"}
    with ssh_stack(config, settings=settings) as stack:
        yield stack


def _bootstrap(api: httpx.Client, options: dict[str, Any]) -> dict[str, Any]:
    run = _ok(api.post(f"/v1/hosts/{HOST}/bootstrap", json=options))
    deadline = time.monotonic() + 300
    while True:
        latest = _ok(api.get(f"/v1/hosts/{HOST}/bootstrap"))
        if latest["id"] == run["id"] and latest["state"] in FINAL:
            return latest  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, latest
        time.sleep(0.25)


def _bpftrace_support(api: httpx.Client, after: float) -> dict[str, Any]:
    """The bpftrace program's line in the host's capabilities, from a probe after `after`."""
    deadline = time.monotonic() + 90
    while True:
        caps = _ok(api.get(f"/v1/hosts/{HOST}"))["capabilities"] or {}
        if caps.get("probed_at", 0) > after:
            (support,) = [p for p in caps["programs"] if p["program"] == "bpftrace"]
            return {"caps": caps, **support}
        assert time.monotonic() < deadline, caps
        time.sleep(0.5)


def _output(run: dict[str, Any], step: str) -> str:
    return next(str(s["output"]) for s in run["steps"] if s["name"] == step)


def test_a_host_bootstrapped_with_bpftrace_runs_it_and_without_refuses_it(
    stack: Stack, api: httpx.Client
) -> None:
    version = subprocess.run(
        ["bpftrace", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    started = time.time()
    run = _bootstrap(api, {"with_bpftrace": True, "heartbeat_s": 1})
    assert run["state"] == "succeeded", (run["error"], run["steps"])
    assert step_statuses(run)["packages"] == "ok"  # present: nothing was installed
    packages = _output(run, "packages")
    assert "bpftrace" in packages.split("present: ", 1)[1].splitlines()[0], packages
    assert f"bpftrace: {version}" in packages  # asked on the host, over SSH
    env = (stack.config.host_dir(HOST) / "etc" / "agent.env").read_text()
    assert "FLEETTRACE_ALLOW_BPFTRACE=true\n" in env
    support = _bpftrace_support(api, started)
    assert support["supported"] is True, support
    assert support["caps"]["bpftrace_version"] == version.split()[-1].removeprefix("v")

    started = time.time()
    again = _bootstrap(api, {"heartbeat_s": 1})
    assert again["state"] == "succeeded", (again["error"], again["steps"])
    assert step_statuses(again)["config"] == "changed"
    assert (
        "FLEETTRACE_ALLOW_BPFTRACE"
        not in (stack.config.host_dir(HOST) / "etc" / "agent.env").read_text()
    )
    support = _bpftrace_support(api, started)
    assert support["supported"] is False
    assert "allow_bpftrace is off" in support["reason"]
