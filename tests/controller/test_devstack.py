"""The local fleet: two hosts in their own namespaces and cgroups, a real job, a clean teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from controller.keys.store import KeyStore
from devstack import Stack, down
from devstack.api import Api
from devstack.config import private_config
from devstack.host import agent_pidfile
from devstack.system import NETNS_DIR, cgroup_path
from node_agent.scope import cgroup2_mount
from node_agent.signing import parse_trusted_keys
from tests.controller.sshfleet import WEB_AND_DB
from tests.controller.support import alive, wait_for

pytestmark = pytest.mark.bcc

HOSTS = WEB_AND_DB


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Names of its own, so the test never touches a developer's `fleettrace dev up` stack.
    config = private_config(
        tmp_path_factory.mktemp("devstack"), HOSTS, kind="t", subnet=200, allow_bpftrace=True
    )
    stack = Stack(config)
    stack.up(online_timeout_s=60)
    try:
        yield stack
    finally:
        down(config.state_dir, purge=True, reap=stack.reap)


def _pids(stack: Stack) -> dict[str, int]:
    return json.loads((stack.config.state_dir / "pids.json").read_text())  # type: ignore[no-any-return]


def _inside(pid: int, *cmd: str) -> str:
    """Run a command in the namespaces of process `pid` (as the host's own processes see it)."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--net", "--mount", "--uts", "--", *cmd],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


def _cgroup_of(pid: int) -> str:
    """The process's cgroup v2 path (the `0::` line)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line.removeprefix("0::") for line in lines if line.startswith("0::"))


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_each_host_has_its_own_namespaces_and_cgroup(stack: Stack) -> None:
    config, pids = stack.config, _pids(stack)
    assert not Path("/opt/fleettrace-demo").exists(), "the hosts' /opt must stay private"
    seen_mnt = set()
    for index, host in enumerate(config.hosts):
        agent = pids[f"{host.name}-agent"]
        assert _inside(agent, "hostname").strip() == host.name
        agent_env = _inside(agent, "cat", "/etc/fleettrace/agent.env")
        assert f"FLEETTRACE_HOST={host.name}\n" in agent_env
        running = int(agent_pidfile(config, host).read_text())
        argv = Path(f"/proc/{running}/cmdline").read_bytes().split(b"\0")
        assert b"--allow-bpftrace" in argv, argv  # `fleettrace dev up --allow-bpftrace`
        trusted = _inside(agent, "cat", "/etc/fleettrace/controller-keys.pub")
        assert set(parse_trusted_keys(trusted)[0]) == {KeyStore(config.keys_dir).signing_id()}
        assert _inside(agent, "ls", "/opt").split() == ["fleettrace-demo"]
        netns = NETNS_DIR / config.netns(host.name)
        assert os.stat(f"/proc/{agent}/ns/net").st_ino == os.stat(netns).st_ino
        assert f"{config.addresses(index)[1]}/30" in _inside(agent, "ip", "-br", "addr")
        seen_mnt.add(_ns(agent, "mnt"))

        # The agent is beside its host's cgroup, the workload inside it, both in the same host.
        assert _cgroup_of(agent) == "/" + config.agent_cgroup(host.name)
        procs = cgroup_path(config.host_cgroup(host.name)) / "cgroup.procs"
        workload = [int(p) for p in procs.read_text().split()]
        assert workload == [pids[f"{host.name}-workload"]]
        for kind in ("uts", "mnt", "net"):
            assert _ns(workload[0], kind) == _ns(agent, kind)
            assert _ns(agent, kind) != _ns(os.getpid(), kind)
    assert len(seen_mnt) == len(config.hosts)


def test_a_job_runs_on_every_host_with_each_hosts_own_numbers(stack: Stack) -> None:
    api = Api(stack.config.api_url, stack.token)
    try:
        hosts = api.hosts()
        assert {n: (h["state"], h["labels"]) for n, h in hosts.items()} == {
            "web-1": ("online", {"role": "web"}),
            "db-1": ("online", {"role": "db"}),
        }
        job = api.submit("syscalls", {"per_process": False}, 2.0)
        final = api.wait_job(job["id"], timeout_s=90)
        results = api.results(job["id"])
    finally:
        api.close()
    assert final["state"] == "succeeded", final
    counts = {}
    for host in results["hosts"]:
        (table,) = host["results"]
        counts[host["host"]] = {key[0]: values[0] for key, values in table["rows"]}
    web, db = counts["web-1"], counts["db-1"]
    # web-1 only calls getppid() in bursts; db-1 only writes and fsyncs: the agent's cgroup
    # scope keeps each host's numbers to its own workload.
    assert web.get("getppid", 0) > 10_000, web
    assert db.get("getppid", 0) * 100 < web["getppid"], db
    assert db.get("fsync", 0) > 10, db
    assert web.get("fsync", 0) == 0, web


def test_a_killed_agent_is_restarted_and_its_host_comes_back(stack: Stack) -> None:
    config, spec = stack.config, stack.config.hosts[0]
    pidfile = agent_pidfile(config, spec)
    killed = int(pidfile.read_text())
    supervisor = _pids(stack)[f"{spec.name}-agent"]
    assert killed != supervisor and alive(killed)
    os.kill(killed, signal.SIGKILL)
    killed_at = datetime.now(timezone.utc)

    def restarted() -> int | None:
        pid = int(pidfile.read_text())
        return pid if pid != killed and alive(pid) else None

    agent = wait_for(restarted, 30, f"{spec.name}'s agent to be restarted")
    assert _cgroup_of(agent) == "/" + config.agent_cgroup(spec.name)
    assert _inside(agent, "hostname").strip() == spec.name
    api = Api(config.api_url, stack.token)
    try:
        # Heartbeats this late come from the new agent: the old one is dead.
        late = killed_at + timedelta(seconds=2 * config.heartbeat_s)

        def back() -> bool:
            host = api.hosts()[spec.name]
            beat = host["last_heartbeat"]
            return host["state"] == "online" and datetime.fromisoformat(beat) > late

        wait_for(back, 60, f"{spec.name} online with a heartbeat of its new agent", 0.3)
        job = api.submit("syscalls", {"per_process": False}, 1.0)
        final = api.wait_job(job["id"], timeout_s=90)
    finally:
        api.close()
    assert final["state"] == "succeeded", final
    assert "restarting in 1s" in (config.logs_dir / f"{spec.name}-agent.log").read_text()


def test_redis_keeps_an_append_only_file(stack: Stack) -> None:
    # Queued tasks and pending cancel flags must survive a Redis restart (README: In production).
    with redis.Redis.from_url(stack.config.redis_url) as client:
        config = client.config_get("append*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec"), config


def test_teardown_leaves_no_namespace_cgroup_link_or_process(stack: Stack) -> None:
    config, pids = stack.config, _pids(stack)
    for spec in config.hosts:  # the supervised agents themselves
        pids[f"{spec.name}-agent-child"] = int(agent_pidfile(config, spec).read_text())
    assert down(config.state_dir, purge=True, reap=stack.reap)
    for index, host in enumerate(config.hosts):
        assert not (NETNS_DIR / config.netns(host.name)).exists()
        assert not Path("/sys/class/net", config.link(index)).exists()
    root = cgroup2_mount()
    assert root is not None
    assert not (root / config.cgroup_parent).exists()
    for name, pid in pids.items():
        assert not alive(pid), f"{name} ({pid}) still exists"
    assert not config.state_dir.exists()
    assert not down(config.state_dir), "a second down finds nothing to do"
