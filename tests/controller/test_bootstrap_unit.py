"""Bootstrap logic without a real host: redaction, each step's look-before-act against a fake
session, run recording, host keys, batches, the API, the Celery path and migration 0002.

The steps' commands are tested on real OpenSSH servers in test_ssh.py.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from alembic import command
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.auth import service as auth_service
from controller.auth.models import Role
from controller.bootstrap import service
from controller.bootstrap.artifacts import TargetPlatform, source_hash, wheel_metadata
from controller.bootstrap.batch import execute_batch, run_many
from controller.bootstrap.models import (
    BatchCreate,
    BootstrapOptions,
    BootstrapRun,
    RunKind,
    RunState,
)
from controller.bootstrap.redact import Redactor, redact, url_secrets
from controller.bootstrap.runner import Executor, execute_run
from controller.bootstrap.ssh import HostKeyRejected, SshTarget, Unreachable
from controller.bootstrap.steps import CONFIG_FILE, SUPERVISOR, TRUSTED_KEYS_FILE
from controller.bootstrap.tasks import ThreadQueue
from controller.cli.bootstrap import Watch
from controller.cli.hosts import _options
from controller.cli.main import build_parser
from controller.db import make_engine, make_sessionmaker, session_scope, utcnow
from controller.hosts import service as hosts_service
from controller.hosts.models import Host, HostCreate
from controller.keys.store import KeyStore
from controller.migrate import alembic_config, upgrade
from controller.settings import Settings
from node_agent.errors import LimitExceeded
from node_agent.protocol import Limits, TraceRequest
from node_agent.settings import AgentSettings
from node_agent.signing import parse_trusted_keys
from node_agent.trace import prepare
from node_agent.wire import agent_user, client_url
from tests.controller.bootstrap_fakes import (
    FINGERPRINT,
    FakeArtifacts,
    FakeHost,
    FakeSession,
    connector,
    fail,
)
from tests.controller.support import (
    FIRST_BOOTSTRAP_STEPS,
    clean_env,
    run_cli,
    step_statuses,
    stop_process,
    wait_for,
)

SECRET = "s3cret-Pass_word"
AGENT_URL = f"redis://agent:{SECRET}@127.0.0.1:6390/0"
AGENT_BASE_URL = "redis://127.0.0.1:6390/0"

# -- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (f"connecting to {AGENT_URL} now", "redis://agent:***@127.0.0.1:6390/0"),
        (f"FLEETTRACE_REDIS_URL={AGENT_URL}", "FLEETTRACE_REDIS_URL=redis://agent:***@"),
        ("redis://:pw0rd-x@host:6379", "redis://:***@host:6379"),
        ("REDIS_PASSWORD=hunter22 next", "REDIS_PASSWORD=*** next"),
        ("password: hunter22", "password: ***"),
        ("url?password=hunter22&db=1", "password=***&db=1"),
        ("token ft_" + "x" * 43, "token ft_***"),
    ],
)
def test_redact_masks_passwords_and_tokens(raw: str, kept: str) -> None:
    out = redact(raw)
    assert kept in out
    for secret in ("hunter22", SECRET, "pw0rd-x", "x" * 43):
        assert secret not in out


def test_redact_masks_private_keys_and_known_secrets_but_keeps_the_rest() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----"
    text_in = f"before\n{key}\nafter; the word {SECRET} alone; host key SHA256:abc"
    out = redact(text_in, [SECRET])
    assert "b3BlbnNzaC1rZXk" not in out and SECRET not in out
    assert out.startswith("before\n") and "after; the word ***" in out
    assert "host key SHA256:abc" in out, "fingerprints are not secrets"
    assert redact("plain output, nothing to hide") == "plain output, nothing to hide"


def test_url_secrets_include_the_decoded_password() -> None:
    assert url_secrets("redis://u:p%40ss%3Aword@h:1/0") == ["p%40ss%3Aword", "p@ss:word"]
    assert url_secrets("redis://h:1/0") == []
    assert url_secrets("unix:///run/redis.sock") == []
    redactor = Redactor()
    redactor.add_url("redis://u:p%40ss%3Aword@h:1/0")
    assert "p@ss:word" not in redactor("echo p@ss:word")


# -- a database and an executor with fakes --------------------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'fleettrace.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Hosts' Redis identities are made in the tests' real Redis; agents are told another."""
    KeyStore(tmp_path / "keys").init()
    return Settings(
        keys_dir=tmp_path / "keys",
        database_url=f"sqlite:///{tmp_path / 'fleettrace.db'}",
        redis_url=redis_url,
        agent_redis_url=AGENT_BASE_URL,
        bootstrap_verify_timeout_s=1.0,
        heartbeat_timeout_s=30.0,
        artifacts_dir=tmp_path / "artifacts",
    )


@pytest.fixture
def artifacts(tmp_path: Path) -> FakeArtifacts:
    directory = tmp_path / "bundle"
    directory.mkdir()
    return FakeArtifacts(directory)


class Lab:
    """Hosts registered in the database, each with a fake machine behind a fake session."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, artifacts: FakeArtifacts
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.artifacts = artifacts
        self.machines: dict[str, FakeHost] = {}
        self.executor = Executor(sessions, settings, artifacts, connector(self.machines))

    def add(self, name: str, *, user: str = "root", beats: bool = True, **fields: Any) -> FakeHost:
        address = f"{name}.test"
        machine = FakeHost(user=user)
        if user != "root":
            machine.facts["sudo"] = "yes"
        if beats:
            machine.on_start = lambda: self.heartbeat(name)
        self.machines[address] = machine
        with session_scope(self.sessions) as session:
            hosts_service.create(
                session=session,
                host_in=HostCreate(name=name, address=address, ssh_user=user, **fields),
            )
        return machine

    def heartbeat(self, name: str, *, probed_ago_s: float = 0.0) -> None:
        """What ingest does when a heartbeat arrives: the agent probed `probed_ago_s` ago."""
        with session_scope(self.sessions) as session:
            host = hosts_service.get(session=session, name=name)
            assert host is not None
            host.last_heartbeat = utcnow()
            host.capabilities = {"kernel_release": "6.1.0", "probed_at": time.time() - probed_ago_s}
            host.agent_version = "0.1.0"

    def run(self, name: str, kind: RunKind = RunKind.bootstrap, **options: Any) -> dict[str, Any]:
        with session_scope(self.sessions) as session:
            run = service.start(
                session=session,
                queue=NullQueue(),
                host_name=name,
                kind=kind,
                options=BootstrapOptions(**options),
                created_by="test",
            )
            run_id = run.id
        execute_run(run_id, self.executor)
        return self.public(run_id)

    def public(self, run_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            run = session.get(BootstrapRun, run_id)
            assert run is not None
            return service.to_public(run).model_dump(mode="json")

    def host(self, name: str) -> Host:
        with self.sessions() as session:
            host = hosts_service.get(session=session, name=name)
            assert host is not None
            return host


class NullQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send_run(self, *, run_id: str, kind: RunKind) -> None:
        self.sent.append((kind.value, run_id))

    def send_batch(self, *, batch_id: str) -> None:
        self.sent.append(("batch", batch_id))


@pytest.fixture
def lab(sessions: sessionmaker[Session], settings: Settings, artifacts: FakeArtifacts) -> Lab:
    return Lab(sessions, settings, artifacts)


def output(run: dict[str, Any], step: str) -> str:
    return next(s["output"] for s in run["steps"] if s["name"] == step)


# -- steps: look before acting --------------------------------------------------------------------


def test_first_bootstrap_changes_everything_and_a_rerun_changes_nothing(lab: Lab) -> None:
    machine = lab.add("web-1", cgroup="fleet/web-1")
    first = lab.run("web-1")
    assert first["state"] == "succeeded", first
    assert step_statuses(first) == FIRST_BOOTSTRAP_STEPS
    assert first["agent_version"] == "0.1.0"
    assert all(s["duration_s"] is not None and s["started_at"] for s in first["steps"])
    assert len(machine.uploads) == 3 and machine.build == lab.artifacts.build_id
    config, mode = machine.files[CONFIG_FILE]
    assert mode == 0o600
    assert b"FLEETTRACE_HOST=web-1\n" in config
    assert b"FLEETTRACE_CGROUP=fleet/web-1\n" in config
    assert b"FLEETTRACE_REDIS_URL=redis://ft-host-web-1:" in config, "the host's own identity"
    assert machine.starts == 1 and SUPERVISOR in machine.files

    commands_before = len(machine.commands)
    second = lab.run("web-1")
    assert second["state"] == "succeeded", second
    assert set(step_statuses(second).values()) == {"ok"}, step_statuses(second)
    later = [c for c, _ in machine.commands[commands_before:]]
    assert len(machine.uploads) == 3, "nothing is sent again"
    assert machine.starts == 1, "a running agent is left alone"
    assert not [c for c in later if "pip install" in c or "cat > " in c or "nohup" in c]


def test_the_controller_keys_are_installed_and_a_new_key_needs_no_restart(
    lab: Lab, settings: Settings
) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    data, mode = machine.files[TRUSTED_KEYS_FILE]
    store = KeyStore(settings.keys_dir)
    assert mode == 0o644 and set(parse_trusted_keys(data.decode())[0]) == {store.signing_id()}
    new = store.prepare()
    run = lab.run("web-1")
    assert step_statuses(run)["config"] == "changed" and step_statuses(run)["service"] == "ok"
    assert machine.starts == 1, "the agent re-reads its trusted keys by itself"
    assert new in parse_trusted_keys(machine.files[TRUSTED_KEYS_FILE][0].decode())[0]
    assert f"controller keys {store.signing_id()}, {new}" in output(run, "config")


def test_bootstrap_refuses_to_install_an_agent_that_would_trust_no_key(
    lab: Lab, settings: Settings
) -> None:
    lab.add("web-1")
    for key in settings.keys_dir.iterdir():
        key.unlink()
    run = lab.run("web-1")
    assert run["state"] == "failed" and step_statuses(run)["config"] == "failed"
    assert "fleettrace keys init" in output(run, "config")


def test_a_newer_agent_is_uploaded_installed_and_restarted(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    lab.artifacts.release()
    run = lab.run("web-1")
    assert run["state"] == "succeeded", run
    assert step_statuses(run)["upload"] == "changed"
    assert machine.uploads[3:] == [
        "/opt/fleettrace/wheels/.incoming/fleettrace-0.1.0-py3-none-any.whl"
    ]
    assert step_statuses(run)["install"] == "changed" and machine.ran("--force-reinstall")
    assert machine.build == "0.1.0+build2"
    assert step_statuses(run)["config"] == "ok"
    assert step_statuses(run)["service"] == "changed" and machine.starts == 2
    assert "stopped the agent: agent upgraded" in output(run, "service")


def test_a_config_change_restarts_the_agent_and_nothing_else(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    run = lab.run("web-1", heartbeat_s=2)
    assert step_statuses(run) == {
        **dict.fromkeys(("preflight", "packages", "upload", "install"), "ok"),
        "config": "changed",
        "service": "changed",
        "verify": "ok",
    }
    assert b"FLEETTRACE_HEARTBEAT_S=2\n" in machine.files[CONFIG_FILE][0]
    assert machine.starts == 2


def test_a_slow_hosts_bounds_reach_its_agent_as_it_reads_them(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emulated VM compiles for minutes: the probe's and a trace's compile bounds, and the
    overhead ceiling a job may lift the guard under, go into agent.env under the agent's names."""
    machine = lab.add("web-1")
    run = lab.run("web-1", probe_timeout_s=900, compile_timeout_s=600.5, max_overhead_pct=400)
    assert run["state"] == "succeeded", run
    env = tmp_path / "agent.env"
    env.write_bytes(machine.files[CONFIG_FILE][0])
    for name in [k for k in os.environ if k.startswith("FLEETTRACE_")]:
        monkeypatch.delenv(name)
    agent = AgentSettings(_env_file=env)
    assert (agent.probe_timeout_s, agent.compile_timeout_s, agent.max_overhead_pct) == (
        900,
        600.5,
        400,
    )
    assert (agent.host, agent.heartbeat_s) == ("web-1", 10.0)
    # Without them the agent keeps its own defaults: nothing of them is written.
    lab.run("web-1")
    assert b"TIMEOUT" not in machine.files[CONFIG_FILE][0]
    assert b"OVERHEAD" not in machine.files[CONFIG_FILE][0]


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        # Rounded to 400 the agent would let jobs run with no overhead budget at all.
        ("max_overhead_pct", 399.9999, "FLEETTRACE_MAX_OVERHEAD_PCT=399.9999"),
        ("compile_timeout_s", 1234.5678, "FLEETTRACE_COMPILE_TIMEOUT_S=1234.5678"),
        ("probe_timeout_s", 1.0000001, "FLEETTRACE_PROBE_TIMEOUT_S=1.0000001"),
        ("heartbeat_s", 0.1, "FLEETTRACE_HEARTBEAT_S=0.1"),
        ("probe_timeout_s", 900, "FLEETTRACE_PROBE_TIMEOUT_S=900"),
        ("max_overhead_pct", 400.0, "FLEETTRACE_MAX_OVERHEAD_PCT=400"),
    ],
)
def test_agent_env_carries_each_number_exactly_as_given(
    lab: Lab,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: str,
    value: float,
    line: str,
) -> None:
    machine = lab.add("web-1")
    run = lab.run("web-1", RunKind.bootstrap, **{option: value})
    assert run["state"] == "succeeded", run
    written = machine.files[CONFIG_FILE][0]
    assert f"{line}\n".encode() in written, written
    env = tmp_path / "agent.env"
    env.write_bytes(written)
    for name in [k for k in os.environ if k.startswith("FLEETTRACE_")]:
        monkeypatch.delenv(name)
    assert getattr(AgentSettings(_env_file=env), option) == value


def test_an_overhead_ceiling_under_400_still_makes_the_agent_require_a_budget(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent lifts the guard only at exactly 400: what bootstrap writes must not round up."""
    machine = lab.add("web-1")
    assert lab.run("web-1", max_overhead_pct=399.9999)["state"] == "succeeded"
    env = tmp_path / "agent.env"
    env.write_bytes(machine.files[CONFIG_FILE][0])
    for name in [k for k in os.environ if k.startswith("FLEETTRACE_")]:
        monkeypatch.delenv(name)
    agent = AgentSettings(_env_file=env)
    unguarded = TraceRequest(
        run_id="r", program="syscalls", duration_s=1, limits=Limits(overhead_pct=None)
    )
    with pytest.raises(LimitExceeded, match="requires an overhead budget"):
        prepare(unguarded, max_overhead_pct=agent.max_overhead_pct)


def test_a_config_file_with_the_wrong_mode_is_rewritten(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    data, _ = machine.files[CONFIG_FILE]
    machine.files[CONFIG_FILE] = (data, 0o644)
    run = lab.run("web-1")
    assert step_statuses(run)["config"] == "changed"
    assert machine.files[CONFIG_FILE][1] == 0o600


def test_missing_packages_are_installed_with_apt(lab: Lab) -> None:
    machine = lab.add("web-1")
    machine.packages = {"python3-venv"}
    machine.facts["headers"] = "no"
    run = lab.run("web-1")
    assert step_statuses(run)["packages"] == "changed", output(run, "packages")
    assert {"python3-bpfcc", "linux-headers-6.1.0-18-amd64"} <= machine.packages
    assert "installing python3-bpfcc, linux-headers-6.1.0-18-amd64" in output(run, "packages")


def test_a_stale_wheel_is_removed(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    machine.wheels["old-1.0-py3-none-any.whl"] = b"old"
    run = lab.run("web-1")
    assert step_statuses(run)["upload"] == "changed"
    assert "old-1.0-py3-none-any.whl" not in machine.wheels
    assert len(machine.uploads) == 3


def test_preflight_stops_a_host_that_cannot_work_with_every_reason(lab: Lab) -> None:
    machine = lab.add("old-1", user="deploy")
    machine.facts.update(
        python="3.8.10", sudo="no", disk_kb="1024", kernel="4.4.0-210", setsid="no"
    )
    run = lab.run("old-1")
    assert run["state"] == "failed"
    assert step_statuses(run)["preflight"] == "failed"
    assert set(list(step_statuses(run).values())[1:]) == {"skipped"}
    error = run["error"]
    for reason in ("Python 3.8.10", "cannot sudo", "1 MB free", "kernel 4.4.0-210", "setsid"):
        assert reason in error, error
    assert "cannot bootstrap:" in output(run, "preflight")
    assert not machine.uploads and not machine.ran("pip install")


def test_a_non_root_user_uploads_to_its_home_and_uses_sudo(lab: Lab) -> None:
    machine = lab.add("web-2", user="deploy")
    run = lab.run("web-2")
    assert run["state"] == "succeeded", run
    assert all(u.startswith("/home/deploy/.fleettrace-upload/") for u in machine.uploads)
    installs = [sudo for c, sudo in machine.commands if c.startswith("install -m 0644")]
    assert installs == [True]
    probes = [sudo for c, sudo in machine.commands if "os_id=" in c]
    assert probes == [False], "preflight only looks"


def test_a_failed_step_is_reported_with_its_output_and_a_rerun_completes(lab: Lab) -> None:
    machine = lab.add("web-1")
    machine.fail_once["--find-links"] = fail("ERROR: No matching distribution found for redis")
    run = lab.run("web-1")
    assert run["state"] == "failed"
    assert run["error"] == "install: pip install failed (exit 1)"
    assert "No matching distribution found for redis" in output(run, "install")
    assert [step_statuses(run)[s] for s in ("config", "service", "verify")] == ["skipped"] * 3
    again = lab.run("web-1")
    assert again["state"] == "succeeded", again
    assert step_statuses(again)["upload"] == "ok" and step_statuses(again)["install"] == "changed"


def test_no_heartbeat_fails_verify_with_the_agents_log_and_no_secret(lab: Lab) -> None:
    machine = lab.add("web-1", beats=False)
    machine.log_tail = f"agent: cannot connect to {AGENT_URL}: refused"
    run = lab.run("web-1", verify_timeout_s=0.5)
    assert run["state"] == "failed"
    assert "no heartbeat with capabilities from web-1 within 0.5s" in run["error"]
    assert "cannot connect to redis://agent:***@127.0.0.1" in output(run, "verify")
    # The host's own secret, as bootstrap issued it into agent.env.
    config = machine.files[CONFIG_FILE][0].decode()
    url = next(line for line in config.splitlines() if line.startswith("FLEETTRACE_REDIS_URL="))
    host_secret = urlsplit(url.split("=", 1)[1]).password or ""
    assert len(host_secret) >= 32
    for secret in (SECRET, host_secret):
        assert secret not in str(run)
        # The broker URL crosses only on stdin, never on a command line.
        assert not any(secret in c for c, _ in machine.commands)
    assert any(host_secret.encode() in data for data in machine.stdins)


def test_a_late_heartbeat_of_the_old_agent_does_not_verify_the_new_one(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    # After the restart only the old agent's last heartbeat (an older probe) reaches the DB.
    machine.on_start = lambda: lab.heartbeat("web-1", probed_ago_s=30)
    run = lab.run("web-1", heartbeat_s=3, verify_timeout_s=0.5)
    assert step_statuses(run)["service"] == "changed"
    assert step_statuses(run)["verify"] == "failed", run
    machine.on_start = lambda: lab.heartbeat("web-1")
    run = lab.run("web-1", heartbeat_s=4)
    assert step_statuses(run)["verify"] == "ok", run


def test_a_crash_inside_a_step_is_recorded_and_logged_without_the_secret(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    lab.add("web-1")

    class Crashing(FakeSession):
        def run(self, command: str, **kwargs: Any) -> Any:
            raise RuntimeError(f"lost the broker {AGENT_URL}")

    lab.executor.connector = lambda target: Crashing(lab.machines[target.address])
    with caplog.at_level("INFO"):
        run = lab.run("web-1")
    assert run["error"] == (
        "preflight: internal error: RuntimeError: lost the broker"
        " redis://agent:***@127.0.0.1:6390/0"
    )
    assert "Traceback" in caplog.text and "lost the broker" in caplog.text
    assert SECRET not in caplog.text and SECRET not in str(run)


def test_uninstall_removes_everything_and_a_second_one_is_a_noop(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.run("web-1")
    acl = redis.Redis.from_url(client_url(lab.settings.redis_url))
    assert acl.acl_getuser(agent_user("web-1")) is not None, "bootstrap issued an identity"
    run = lab.run("web-1", RunKind.uninstall)
    assert acl.acl_getuser(agent_user("web-1")) is None, "its identity went with the agent"
    acl.close()
    assert run["state"] == "succeeded", run
    assert step_statuses(run) == {
        "connect": "ok",
        "service": "changed",
        "files": "changed",
        "verify": "ok",
        "identity": "changed",
    }
    assert not machine.supervisor and not machine.files and not machine.wheels
    again = lab.run("web-1", RunKind.uninstall)
    assert set(step_statuses(again).values()) == {"ok"}, step_statuses(again)


# -- host keys --------------------------------------------------------------------------------


def test_a_rejected_host_key_flags_the_host_and_nothing_runs(lab: Lab) -> None:
    lab.add("web-1")
    offered = "SHA256:" + "B" * 43

    def refuse(target: SshTarget) -> FakeSession:
        raise HostKeyRejected("host key of web-1.test changed", fingerprint=offered)

    lab.executor.connector = refuse
    run = lab.run("web-1")
    assert run["state"] == "failed"
    assert run["error"].startswith("preflight: host key rejected, nothing was sent")
    host = lab.host("web-1")
    assert host.host_key_rejected is not None
    assert host.host_key_rejected["fingerprint"] == offered
    assert lab.machines["web-1.test"].sessions == 0


def test_trust_on_first_use_pins_the_key_it_saw(lab: Lab) -> None:
    machine = lab.add("web-1")
    lab.executor.connector = connector(lab.machines, trusted_new_key=True)
    seen: list[SshTarget] = []
    inner = lab.executor.connector

    def spy(target: SshTarget) -> FakeSession:
        seen.append(target)
        return inner(target)

    lab.executor.connector = spy
    run = lab.run("web-1", trust_on_first_use=True)
    assert run["state"] == "succeeded", run
    assert seen[0].trust_on_first_use and seen[0].pinned_fingerprint is None
    host = lab.host("web-1")
    assert host.host_key_fingerprint == FINGERPRINT
    assert not host.trust_on_first_use
    assert "pinned on the host" in output(run, "preflight")
    lab.executor.connector = spy
    lab.run("web-1")
    assert seen[1].pinned_fingerprint == FINGERPRINT and not seen[1].trust_on_first_use
    assert machine.sessions == 2


def test_an_unreachable_host_fails_preflight_with_the_reason(lab: Lab) -> None:
    lab.add("gone-1")

    def unreachable(target: SshTarget) -> FakeSession:
        raise Unreachable(f"cannot reach {target.address}:22 within 10s: timed out")

    lab.executor.connector = unreachable
    run = lab.run("gone-1")
    assert run["error"] == (
        "preflight: cannot connect to root@gone-1.test:22: cannot reach gone-1.test:22"
        " within 10s: timed out"
    )
    assert lab.host("gone-1").host_key_rejected is None


# -- batches ----------------------------------------------------------------------------------


def test_run_many_never_exceeds_the_parallel_limit() -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def work(item: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return True

    started, unstarted = run_many([str(i) for i in range(12)], work, parallel=3, max_failures=None)
    assert sorted(started, key=int) == [str(i) for i in range(12)] and unstarted == []
    assert peak == 3


def test_run_many_starts_none_after_max_failures() -> None:
    def work(item: str) -> bool:
        time.sleep(0.01)
        return not item.startswith("bad")

    items = ["bad-1", "bad-2", "ok-1", "ok-2", "ok-3"]
    started, unstarted = run_many(items, work, parallel=1, max_failures=2)
    assert started == ["bad-1", "bad-2"] and unstarted == ["ok-1", "ok-2", "ok-3"]
    # In flight when the budget runs out: those finish, and no new one starts.
    started, unstarted = run_many(items, work, parallel=2, max_failures=1)
    assert started == ["bad-1", "bad-2"] and unstarted == ["ok-1", "ok-2", "ok-3"]
    started, unstarted = run_many(items, work, parallel=2, max_failures=3)
    assert started == items and unstarted == []


def test_run_many_counts_a_crash_as_a_failure() -> None:
    def work(item: str) -> bool:
        raise RuntimeError("boom")

    assert run_many(["a", "b"], work, parallel=1, max_failures=1) == (["a"], ["b"])


def test_a_batch_cancels_the_hosts_it_never_started(lab: Lab) -> None:
    for name in ("a-1", "b-1", "c-1"):
        lab.add(name)
    lab.machines["a-1.test"].facts["python"] = "3.6.0"
    with session_scope(lab.sessions) as session:
        batch = service.start_batch(
            session=session,
            queue=NullQueue(),
            batch_in=BatchCreate(hosts=["a-1", "b-1", "c-1"], parallel=1, max_failures=1),
            created_by="test",
        )
        batch_id = batch.id
    execute_batch(batch_id, lab.executor)
    with lab.sessions() as session:
        runs = {r.host_name: r for r in session.query(BootstrapRun).filter_by(batch_id=batch_id)}
        assert runs["a-1"].state == "failed"
        assert runs["b-1"].state == runs["c-1"].state == "cancelled"
        assert runs["b-1"].error == "not started: the batch reached 1 failed"
    assert lab.machines["b-1.test"].sessions == 0


def test_a_batch_without_failures_bootstraps_every_host(lab: Lab) -> None:
    for name in ("a-1", "b-1", "c-1"):
        lab.add(name, labels={"role": "web"})
    with session_scope(lab.sessions) as session:
        batch = service.start_batch(
            session=session,
            queue=NullQueue(),
            batch_in=BatchCreate(selector={"role": "web"}, parallel=3),
            created_by="test",
        )
        batch_id = batch.id
    execute_batch(batch_id, lab.executor)
    with lab.sessions() as session:
        states = {r.host_name: r.state for r in session.query(BootstrapRun)}
    assert states == dict.fromkeys(("a-1", "b-1", "c-1"), "succeeded")


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def api(
    settings: Settings, sessions: sessionmaker[Session]
) -> Iterator[tuple[TestClient, NullQueue, dict[str, str]]]:
    queue = NullQueue()
    app = create_app(settings, bootstrap_queue=queue)
    with sessions() as session:
        _, raw = auth_service.create(session=session, name="admin", role=Role.admin)
        session.commit()
    with TestClient(app) as client:
        yield client, queue, {"Authorization": f"Bearer {raw}"}
    app.state.engine.dispose()


def test_the_api_queues_one_run_shows_it_and_refuses_a_second(
    api: tuple[TestClient, NullQueue, dict[str, str]],
) -> None:
    client, queue, admin = api
    body = {"name": "web-1", "address": "192.0.2.10", "ssh_user": "deploy", "ssh_port": 2222}
    assert client.post("/v1/hosts", json=body, headers=admin).status_code == 201
    answer = client.post(
        "/v1/hosts/web-1/bootstrap", json={"trust_on_first_use": True}, headers=admin
    )
    assert answer.status_code == 202, answer.text
    run = answer.json()
    assert run["state"] == "pending" and run["kind"] == "bootstrap"
    assert run["options"] == {"trust_on_first_use": True}
    assert run["steps"][0]["name"] == "preflight"
    assert queue.sent == [("bootstrap", run["id"])]
    shown = client.get("/v1/hosts/web-1/bootstrap", headers=admin).json()
    assert shown["id"] == run["id"]
    again = client.post("/v1/hosts/web-1/bootstrap", headers=admin)
    assert again.status_code == 409 and "already under way" in again.text
    host = client.get("/v1/hosts/web-1", headers=admin).json()
    assert (host["ssh_user"], host["ssh_port"], host["host_key_rejected"]) == ("deploy", 2222, None)


def test_the_api_checks_batches_and_hosts(
    api: tuple[TestClient, NullQueue, dict[str, str]],
) -> None:
    client, queue, admin = api
    client.post("/v1/hosts", json={"name": "noaddr"}, headers=admin)
    cases = [
        ({"hosts": ["x"], "selector": {"a": "b"}}, 422, "exactly one"),
        ({"hosts": ["missing-1"]}, 422, "no such hosts: missing-1"),
        ({"selector": {"role": "none"}}, 422, "no host matches"),
        ({"hosts": ["noaddr"]}, 422, "no address"),
        ({"hosts": ["noaddr"], "parallel": 0}, 422, "parallel"),
    ]
    for body, code, message in cases:
        answer = client.post("/v1/hosts/bootstrap", json=body, headers=admin)
        assert answer.status_code == code and message in answer.text, (body, answer.text)
    assert client.post("/v1/hosts/nope/uninstall", headers=admin).status_code == 404
    assert client.get("/v1/hosts/noaddr/bootstrap", headers=admin).status_code == 404
    assert queue.sent == []
    bad = client.post(
        "/v1/hosts", json={"name": "k", "host_key_fingerprint": "MD5:aa"}, headers=admin
    )
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_timeout_s", 1e-07),
        ("probe_timeout_s", 0.999),
        ("compile_timeout_s", 1e-07),
        ("compile_timeout_s", 0),
        ("compile_timeout_s", 3601),
    ],
)
def test_the_api_refuses_agent_bounds_no_compile_could_meet_naming_the_field(
    api: tuple[TestClient, NullQueue, dict[str, str]], field: str, value: float
) -> None:
    client, queue, admin = api
    client.post("/v1/hosts", json={"name": "web-1", "address": "web-1.test"}, headers=admin)
    for path, body, loc in (
        ("/v1/hosts/web-1/bootstrap", {field: value}, ["body", field]),
        ("/v1/hosts/bootstrap", {"hosts": ["web-1"], "options": {field: value}},
         ["body", "options", field]),
    ):  # fmt: skip
        answer = client.post(path, json=body, headers=admin)
        assert answer.status_code == 422, answer.text
        assert [e["loc"] for e in answer.json()["detail"]] == [loc], answer.text
    assert queue.sent == []
    assert getattr(BootstrapOptions.model_validate({field: 1}), field) == 1, "one second is allowed"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--probe-timeout", "1e-07"],
            "probe_timeout_s: Input should be greater than or equal to 1 (got 1e-07)",
        ),
        (
            ["--compile-timeout", "0.5", "--max-failures", "1"],
            "options.compile_timeout_s: Input should be greater than or equal to 1 (got 0.5)",
        ),
    ],
)
def test_the_cli_refuses_a_useless_agent_bound_in_one_line(
    api: tuple[TestClient, NullQueue, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    line: str,
) -> None:
    client, queue, admin = api
    client.post("/v1/hosts", json={"name": "web-1", "address": "web-1.test"}, headers=admin)
    call = run_cli(monkeypatch, capsys, client, admin["Authorization"].removeprefix("Bearer "))
    # --no-wait: were it accepted, nothing here would ever run it.
    code, out, err = call("hosts", "bootstrap", "web-1", "--no-wait", *argv)
    assert (code, out, err) == (2, "", f"fleettrace: error: {line}\n")
    assert queue.sent == []


def test_the_api_starts_a_batch(api: tuple[TestClient, NullQueue, dict[str, str]]) -> None:
    client, queue, admin = api
    for name in ("a-1", "b-1"):
        body = {"name": name, "address": f"{name}.test", "labels": {"role": "db"}}
        client.post("/v1/hosts", json=body, headers=admin)
    answer = client.post(
        "/v1/hosts/bootstrap",
        json={"selector": {"role": "db"}, "parallel": 2, "max_failures": 1},
        headers=admin,
    )
    assert answer.status_code == 202, answer.text
    batch = answer.json()
    assert [r["host"] for r in batch["runs"]] == ["a-1", "b-1"]
    assert queue.sent == [("batch", batch["id"])]


# -- the CLI ----------------------------------------------------------------------------------


def test_the_cli_adds_bootstraps_with_progress_and_uninstalls(
    lab: Lab,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = ThreadQueue(lab.executor)
    app = create_app(settings, bootstrap_queue=queue)
    with lab.sessions() as session:
        _, raw = auth_service.create(session=session, name="cli", role=Role.admin)
        session.commit()
    with TestClient(app) as http:
        call = run_cli(monkeypatch, capsys, http, raw)

        for name, python in (("web-1", "3.11.2"), ("web-2", "3.9.2")):
            machine = FakeHost(user="deploy")
            machine.facts.update(sudo="yes", python=python)
            machine.on_start = lambda name=name: lab.heartbeat(name)  # type: ignore[misc]
            lab.machines[f"{name}.test"] = machine
            code, out, _ = call(
                *("hosts", "add", name, "--address", f"{name}.test", "--label", "role=web"),
                *("--ssh-user", "deploy", "--port", "2222", "--fingerprint", FINGERPRINT),
            )
            assert code == 0, out
        code, out, err = call("hosts", "bootstrap", "--selector", "role=web", "--parallel", "2")
        queue.join(30)
        assert code == 1, (out, err)
        assert "web-1: upload changed" in err and "web-1: bootstrap succeeded (agent 0.1.0)" in err
        assert "web-2: preflight failed" in err
        assert "Python 3.9.2 at /usr/bin/python3 is too old" in err, "the failed step's output"
        assert "1 failed, 1 succeeded" in out
        code, out, _ = call("hosts", "show", "web-1")
        assert "deploy@web-1.test:2222" in out and f"pinned {FINGERPRINT}" in out
        code, out, err = call("hosts", "bootstrap", "web-1")
        assert code == 0 and "web-1: install ok" in err, err
        code, out, err = call("hosts", "uninstall", "web-1")
        queue.join(30)
        assert code == 0 and "web-1: uninstall succeeded" in err, err
        code, out, err = call("hosts", "bootstrap", "web-1", "--selector", "role=web")
        assert code == 2 and "host names or --selector" in err
    app.state.engine.dispose()


def test_the_live_table_shows_each_hosts_current_step() -> None:
    def run(state: str, *steps: str, error: str | None = None) -> dict[str, Any]:
        names = ["preflight", "packages", "upload"]
        return {
            "id": "r",
            "kind": "bootstrap",
            "state": state,
            "error": error,
            "steps": [
                {"name": n, "status": st, "duration_s": 1.0}
                for n, st in zip(names, steps, strict=True)
            ],
        }

    watch = Watch(
        {
            "web-1": run("running", "ok", "changed", "running"),
            "web-2": run("failed", "failed", "skipped", "skipped", error="preflight: no python"),
        },
        clock=lambda: 5.0,
    )
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(watch)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert re.search(r"web-1\s+running\s+upload\s+2/3", shown), shown
    assert re.search(r"web-2\s+failed\s+preflight\s+0/3\s+preflight: no python", shown), shown


# -- artifacts --------------------------------------------------------------------------------


def test_platform_tags_cover_older_glibcs_and_the_legacy_names() -> None:
    tags = TargetPlatform(python="3.11", arch="x86_64", glibc="2.36").platform_tags()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags


def test_wheel_metadata_keeps_only_the_base_requirements(tmp_path: Path) -> None:
    wheel = tmp_path / "fleettrace-0.2.0-py3-none-any.whl"
    metadata = (
        "Metadata-Version: 2.4\nName: fleettrace\nVersion: 0.2.0\n"
        "Requires-Dist: pydantic<3,>=2.5\nRequires-Dist: celery[redis]<6,>=5.3\n"
        'Requires-Dist: fastapi>=0.110; extra == "controller"\n\nRequires-Dist: not-a-header\n'
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fleettrace-0.2.0.dist-info/METADATA", metadata)
    assert wheel_metadata(wheel) == ("0.2.0", ["pydantic<3,>=2.5", "celery[redis]<6,>=5.3"])


def test_the_source_hash_follows_the_packaged_files_only(tmp_path: Path) -> None:
    (tmp_path / "node_agent").mkdir()
    (tmp_path / "controller" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "node_agent" / "a.py").write_text("x = 1\n")
    first = source_hash(tmp_path)
    (tmp_path / "controller" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not packaged")
    assert source_hash(tmp_path) == first
    (tmp_path / "node_agent" / "a.py").write_text("x = 2\n")
    assert source_hash(tmp_path) != first


# -- through Celery: the controller queue and `fleettrace worker` ------------------------------


def test_a_run_goes_through_the_controller_queue_to_the_worker(
    redis_url: str, tmp_path: Path
) -> None:
    """Real Redis and a real `fleettrace worker`; the host is a closed local port."""
    database = f"sqlite:///{tmp_path / 'celery.db'}"
    upgrade(database)
    engine = make_engine(database)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as session:
        hosts_service.create(
            session=session, host_in=HostCreate(name="closed-1", address="127.0.0.1", ssh_port=9)
        )
    env = clean_env(
        FLEETTRACE_DATABASE_URL=database,
        FLEETTRACE_REDIS_URL=redis_url,
        FLEETTRACE_SSH_CONNECT_TIMEOUT_S="3",
    )
    code = "import sys; from controller.cli import main; sys.exit(main(sys.argv[1:]))"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "worker", "--concurrency", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:
        from controller.bootstrap.tasks import CeleryBootstrapQueue

        queue = CeleryBootstrapQueue(redis_url)
        with session_scope(sessions) as session:
            run = service.start(
                session=session,
                queue=queue,
                host_name="closed-1",
                kind=RunKind.bootstrap,
                options=BootstrapOptions(),
                created_by="test",
            )
            run_id = run.id
        queue.celery.close()

        def finished() -> BootstrapRun | None:
            assert proc.poll() is None, log.read_text()[-3000:]
            with sessions() as session:
                found = session.get(BootstrapRun, run_id)
                return found if found is not None and RunState(found.state).final else None

        done = wait_for(finished, 60, "the worker to finish the run", every_s=0.2)
        # Remote control is off: no answer to a ping, and a shutdown broadcast stops nothing.
        control = CeleryBootstrapQueue(redis_url).celery
        assert control.control.ping(timeout=1.0) == []
        control.control.shutdown()
        time.sleep(2.0)
        assert proc.poll() is None, log.read_text()[-3000:]
        control.close()
    finally:
        stop_process(proc)
        engine.dispose()
    assert done.state == "failed"
    assert done.error is not None and "cannot connect to root@127.0.0.1:9" in done.error


# -- migration 0002 ---------------------------------------------------------------------------


def test_migration_0002_upgrades_existing_hosts_and_downgrades(db_url: str) -> None:
    config = alembic_config(db_url)
    command.upgrade(config, "0001")
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO hosts (name, labels, created_at) VALUES ('old', '{}', :now)"),
                {"now": utcnow()},
            )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT ssh_user, ssh_port, trust_on_first_use, host_key_fingerprint FROM hosts"
                )
            ).one()
            assert tuple(row) == ("root", 22, False, None)
        tables = set(inspect(engine).get_table_names())
        assert {"bootstrap_batches", "bootstrap_runs", "bootstrap_steps"} <= tables
        command.downgrade(config, "0001")
        assert "ssh_user" not in {c["name"] for c in inspect(engine).get_columns("hosts")}
        assert "bootstrap_runs" not in inspect(engine).get_table_names()
        command.upgrade(config, "head")
    finally:
        engine.dispose()


@pytest.mark.parametrize("shape", ["a://x:", "a://", "a://b:c", "PASSWORD", "password_", "ft_ "])
def test_redact_is_linear_in_hostile_text(shape: str) -> None:
    """1 MB shaped to make the patterns backtrack comes back at once, still masking what is
    there (bounded, possessive patterns; the unbounded URL one was quadratic: ~30 min)."""
    text = shape * ((1 << 20) // len(shape)) + " redis://u:pw@h PASSWORD=pw"
    out = redact(text)
    assert out.endswith(" redis://u:***@h PASSWORD=***")
    assert out.startswith(shape * 10_000)  # nothing in the hostile part looked like a secret


# -- bpftrace -------------------------------------------------------------------------------------


def _agent_env(machine: FakeHost) -> str:
    return machine.files[CONFIG_FILE][0].decode()


def test_with_bpftrace_installs_it_checks_it_runs_and_allows_it(lab: Lab) -> None:
    machine = lab.add("web-1")
    run = lab.run("web-1", with_bpftrace=True)
    assert run["state"] == "succeeded", run
    assert "bpftrace" in machine.packages
    packages = output(run, "packages")
    assert "installing bpftrace" in packages and "bpftrace: bpftrace v0.17.0" in packages
    assert machine.ran("apt-get install -y -q --no-install-recommends bpftrace")
    assert "FLEETTRACE_ALLOW_BPFTRACE=true\n" in _agent_env(machine)
    again = lab.run("web-1", with_bpftrace=True)
    assert step_statuses(again)["packages"] == "ok" and step_statuses(again)["config"] == "ok"
    # Without the option the agent no longer runs scripts (the package stays: it is the distro's).
    without = lab.run("web-1")
    assert step_statuses(without)["config"] == "changed"
    assert "FLEETTRACE_ALLOW_BPFTRACE" not in _agent_env(machine)


def test_without_the_option_bpftrace_is_neither_installed_nor_asked_for(lab: Lab) -> None:
    machine = lab.add("web-1")
    run = lab.run("web-1")
    assert run["state"] == "succeeded", run
    assert "bpftrace" not in machine.packages and not machine.ran("bpftrace --version")
    assert "FLEETTRACE_ALLOW_BPFTRACE" not in _agent_env(machine)


def test_a_failed_bpftrace_install_is_one_line_with_apts_output(lab: Lab) -> None:
    machine = lab.add("web-1")
    machine.fail_once["apt-get install"] = fail("E: Unable to locate package bpftrace", 100)
    run = lab.run("web-1", with_bpftrace=True)
    assert run["state"] == "failed"
    assert run["error"] == "packages: apt-get install bpftrace failed (exit 100)"
    assert "E: Unable to locate package bpftrace" in output(run, "packages")
    assert not machine.uploads, "nothing after the failed step"


def test_a_bpftrace_that_does_not_run_fails_the_step_saying_why(lab: Lab) -> None:
    machine = lab.add("web-1")
    machine.packages.add("bpftrace")
    machine.fail_once["bpftrace --version"] = fail(
        "bpftrace: error while loading shared libraries: libbcc.so.0", 127
    )
    run = lab.run("web-1", with_bpftrace=True)
    assert run["state"] == "failed"
    assert run["error"] == (
        "packages: bpftrace is installed but `bpftrace --version` fails:"
        " bpftrace: error while loading shared libraries: libbcc.so.0"
    )


def test_preflight_says_when_bpftrace_cannot_be_had(lab: Lab) -> None:
    machine = lab.add("web-1")
    machine.facts.update({"apt-get": "no", "dpkg-query": "no", "bpftrace": "no"})
    run = lab.run("web-1", with_bpftrace=True)
    assert run["state"] == "failed"
    assert "no bpftrace on PATH and no apt to install it (--with-bpftrace)" in run["error"]
    # The same host without the option is fine: bpftrace is not needed.
    assert lab.run("web-1")["state"] == "succeeded"


def test_the_cli_asks_for_bpftrace_with_with_bpftrace() -> None:
    parser = build_parser()
    args = parser.parse_args(["hosts", "bootstrap", "web-1", "--with-bpftrace"])
    assert _options(args) == {"with_bpftrace": True}
    assert _options(parser.parse_args(["hosts", "bootstrap", "web-1"])) == {}
