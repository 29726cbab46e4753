"""Controller fixtures on real services: Redis, PostgreSQL, the app, ingest and real agents.

Slow things (servers, agents) are session- or module-scoped; a module gets its own database
and a flushed Redis, and overrides `database_url` or `settings_overrides` when it needs to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.auth import service as auth_service
from controller.auth.models import Role
from controller.db import make_engine, make_sessionmaker
from controller.dispatch import CeleryDispatcher
from controller.ingest.consumer import Ingest
from controller.keys.store import KeyStore
from controller.migrate import upgrade
from controller.schedules.scheduler import Scheduler
from controller.settings import Settings
from devstack import harness
from devstack.harness import PostgresServer
from node_agent.protocol import Heartbeat, Snapshot, StateChange, TraceRequest
from node_agent.wire import AGENT_USER_PREFIX, client_url, events_stream
from tests.controller.support import (
    clean_env,
    envelope,
    missing,
    run_cli,
    stop_process,
    wait_for,
)
from tests.helpers import cgroup_name

BIN = Path(sys.executable).parent


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a unix socket (no TCP) that requires auth; yields the
    controller's unix:// URL (with its user and password)."""
    if not harness.REDIS_SERVER.exists():
        missing(f"{harness.REDIS_SERVER} (apt install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="ft-redis-"))
    try:
        with harness.redis_server(workdir) as server:
            yield server.url
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url(redis_server: str) -> str:
    """The test Redis, emptied once per module (agents keep their queues for the module)."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
        for user in client.acl_users():
            name = user.decode() if isinstance(user, bytes) else str(user)
            if name.startswith(AGENT_USER_PREFIX):
                client.acl_deluser(name)
    return redis_server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(client_url(redis_url))
    yield client
    client.close()


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 cluster on a unix socket (fsync off: tests need no durability)."""
    if not harness.postgres_available():
        missing(f"PostgreSQL 15 in {harness.PG_BIN} (apt install postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="ft-pg-"))
    try:
        with harness.postgres_cluster(workdir, durable=False, max_connections=200) as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database per module on each backend (for storage-level tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'fleettrace.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SQLite by default; storage modules override this with `db_url`."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'fleettrace.db'}"


# -- the controller -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings_overrides() -> dict[str, Any]:
    """Modules override this to change settings (e.g. a short task expiry)."""
    return {}


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's controller signing keys (a module may rotate them without harming others)."""
    path = tmp_path_factory.mktemp("keys") / "keys"
    KeyStore(path).init()
    return path


@pytest.fixture(scope="module")
def settings(
    database_url: str, redis_url: str, keys_dir: Path, settings_overrides: dict[str, Any]
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "keys_dir": keys_dir,
        "task_expiry_s": 10.0,
        "heartbeat_timeout_s": 5.0,
        "max_duration_s": 600.0,
        "ingest_claim_idle_ms": 1000,
        **settings_overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    """The module's database, migrated to the newest schema."""
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


class RecordingDispatcher(CeleryDispatcher):
    """The real Celery dispatcher, remembering what it sent so tests can check it."""

    def __init__(self, redis_url: str, keys: KeyStore) -> None:
        super().__init__(redis_url, keys)
        self.sent: list[tuple[str, TraceRequest]] = []
        self.cancels: list[str] = []

    def send_all(
        self, work: Sequence[tuple[str, TraceRequest]], *, expires_s: float
    ) -> list[tuple[TraceRequest, Exception]]:
        unsent = super().send_all(work, expires_s=expires_s)
        failed = {request.run_id for request, _ in unsent}
        self.sent.extend((h, r) for h, r in work if r.run_id not in failed)
        return unsent

    def request_cancel(self, *, host: str, run_id: str) -> None:
        super().request_cancel(host=host, run_id=run_id)
        self.cancels.append(run_id)


@pytest.fixture(scope="module")
def dispatcher(settings: Settings) -> Iterator[RecordingDispatcher]:
    dispatcher = RecordingDispatcher(settings.redis_url, KeyStore(settings.keys_dir))
    yield dispatcher
    made = vars(dispatcher)  # cached_property: only what was used exists
    if "celery" in made:
        dispatcher.celery.close()
    if "redis" in made:
        dispatcher.redis.close()


@pytest.fixture(scope="module")
def app(settings: Settings, engine: Engine, dispatcher: RecordingDispatcher) -> Iterator[FastAPI]:
    app = create_app(settings, dispatcher)
    yield app
    app.state.engine.dispose()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@dataclass
class Tokens:
    """API tokens made straight in the database, one per role, plus a revoked one."""

    sessions: sessionmaker[Session]
    raw: dict[str, str] = field(default_factory=dict)

    def make(self, role: str, *, revoked: bool = False) -> str:
        with self.sessions() as session:
            token, raw = auth_service.create(session=session, name=f"test-{role}", role=Role(role))
            if revoked:
                auth_service.revoke(session=session, token_id=token.id)
            session.commit()
        return raw

    def token(self, role: str) -> str:
        if role not in self.raw:
            self.raw[role] = self.make(role)
        return self.raw[role]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[TestClient, str], Cli]:
    """cli_for(app client, token): `fleettrace ARGS...` through the real main() against it."""
    return partial(run_cli, monkeypatch, capsys)


@pytest.fixture(scope="module")
def tokens(sessions: sessionmaker[Session]) -> Tokens:
    return Tokens(sessions)


class IngestThread:
    """Ingest.run_forever in a thread, stoppable and restartable."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ingest: Ingest | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        assert not self.running, "ingest is running already"
        client = redis.Redis.from_url(client_url(self.settings.redis_url))
        self.ingest = Ingest(self.settings, self.sessions, client)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.ingest.run_forever, args=(self._stop,), name="ingest", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "ingest did not stop"
        self._thread = None
        if self.ingest is not None:
            self.ingest.redis.close()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def ingest(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[IngestThread]:
    thread = IngestThread(settings, sessions)
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def feeder(
    settings: Settings, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> Iterator[Feeder]:
    feeder = Feeder(Ingest(settings, sessions, redis_client))
    feeder.ingest.ensure_group()
    yield feeder


class Feeder:
    """Puts agents' events on the real stream and lets a real Ingest store them."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def __call__(
        self, host: str, *events: Snapshot | StateChange | Heartbeat, job_id: str | None = None
    ) -> None:
        for event in events:
            self.ingest.redis.xadd(events_stream(host), {"data": envelope(host, event, job_id)})
        self.drain()

    def another(self, consumer: str | None = None) -> Ingest:
        """A second controller's Ingest on the same stream and database (by default under the
        same consumer name, as after a restart)."""
        settings = self.ingest.settings
        if consumer is not None:
            settings = settings.model_copy(update={"ingest_consumer": consumer})
        return Ingest(settings, self.ingest.sessions, self.ingest.redis)

    def drain(self) -> None:
        self.ingest.refresh_hosts(force=True)
        for _ in range(100):
            if self.ingest.step(block_ms=50) == 0 and self.pending() == 0 and self.lag() == 0:
                return
        raise AssertionError("ingest did not drain the stream")

    def pending(self) -> int:
        self.ingest.refresh_hosts()
        total = 0
        for host in self.ingest.hosts:
            info: Any = self.ingest.redis.xpending(events_stream(host), self.ingest.group)
            total += int(info["pending"])
        return total

    def lag(self) -> int:
        total = 0
        for host in self.ingest.hosts:
            for group in self.ingest.redis.xinfo_groups(events_stream(host)):
                if group["name"] in (self.ingest.group, self.ingest.group.encode()):
                    total += int(group.get("lag") or 0)
        return total


@dataclass
class AgentProcess:
    host: str
    cgroup: str | None
    proc: subprocess.Popen[bytes]
    log: Path
    redis_url: str = ""

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


class Agents:
    """Starts real `fleettrace-agent worker` processes and stops them all at the end."""

    def __init__(self, settings: Settings, client: TestClient, tokens: Tokens, logs: Path) -> None:
        self.settings = settings
        self.client = client
        self.tokens = tokens
        self.logs = logs
        self.started: list[AgentProcess] = []

    def trusted_keys_file(self) -> Path:
        """The controller's public keys as bootstrap installs them, refreshed from its keys dir."""
        path = self.logs / "controller-keys.pub"
        path.write_text(KeyStore(self.settings.keys_dir).trusted_keys_text())
        return path

    def state_dir(self, host: str) -> Path:
        return self.logs / f"state-{host}"

    def start(
        self,
        host: str,
        cgroup: str | Path | None = None,
        *,
        wait: bool = True,
        trusted_keys: Path | None = None,
        allow_bpftrace: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> AgentProcess:
        """Start an agent with its host's own Redis identity (the host is added if it is not
        known); with wait, return once its host is online with capabilities. `env`: more
        variables for it (a PATH without bpftrace)."""
        argv = [str(BIN / "fleettrace-agent"), "worker", "--host", host]
        redis_url = self.identity(host)
        if cgroup is not None:
            argv += ["--cgroup", str(cgroup)]
        if allow_bpftrace:
            argv.append("--allow-bpftrace")
        log = self.logs / f"agent-{host}.log"
        env = clean_env(
            FLEETTRACE_HEARTBEAT_S="0.5",
            FLEETTRACE_AGENT_CONFIG=os.devnull,
            FLEETTRACE_TRUSTED_KEYS=str(trusted_keys or self.trusted_keys_file()),
            FLEETTRACE_STATE_DIR=str(self.state_dir(host)),
            FLEETTRACE_REDIS_URL=redis_url,
            **(env or {}),
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        agent = AgentProcess(host, None if cgroup is None else str(cgroup), proc, log, redis_url)
        self.started.append(agent)
        if wait:
            self.wait_online(agent)
        return agent

    def start_all(
        self, hosts: Sequence[str], *, allow_bpftrace: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Agents for `hosts`, started together, each confined to the cgroup make_cgroup makes
        for its host; returns each host once online."""
        started = [
            self.start(host, cgroup_name(host), wait=False, allow_bpftrace=allow_bpftrace)
            for host in hosts
        ]
        return {a.host: self.wait_online(a) for a in started}

    def identity(self, host: str) -> str:
        """The host's own Redis URL, freshly issued by the controller (adding the host)."""
        admin = self.tokens.headers("admin")
        answer = self.client.post(f"/v1/hosts/{host}/credential", headers=admin)
        if answer.status_code == 404:
            answer = self.client.post("/v1/hosts", json={"name": host}, headers=admin)
            assert answer.status_code == 201, answer.text
            url: str = answer.json()["join"]["redis_url"]
            return url
        assert answer.status_code == 200, answer.text
        url = answer.json()["redis_url"]
        return url

    def wait_online(self, agent: AgentProcess, timeout: float = 60.0) -> dict[str, Any]:
        headers = self.tokens.headers("viewer")

        def online() -> dict[str, Any] | None:
            if agent.proc.poll() is not None:
                raise AssertionError(f"agent {agent.host} exited:\n{agent.log_tail()}")
            answer = self.client.get(f"/v1/hosts/{agent.host}", headers=headers)
            if answer.status_code != 200:
                return None
            host: dict[str, Any] = answer.json()
            return host if host["state"] == "online" and host["capabilities"] else None

        try:
            result: dict[str, Any] = wait_for(online, timeout, f"host {agent.host} online", 0.1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{agent.log_tail()}") from None
        return result

    def stop(self, agent: AgentProcess) -> None:
        stop_process(agent.proc)

    def stop_all(self) -> None:
        for agent in reversed(self.started):
            self.stop(agent)


@pytest.fixture(scope="module")
def agent(
    settings: Settings,
    client: TestClient,
    tokens: Tokens,
    ingest: IngestThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Agents]:
    """Factory: agent.start(host, cgroup) runs a real agent and waits until it is online."""
    factory = Agents(settings, client, tokens, tmp_path_factory.mktemp("agents"))
    yield factory
    factory.stop_all()


@pytest.fixture
def scheduler_tick_s() -> float:
    """How often the scheduler fixture's loop looks for due slots (a module may override it)."""
    return 0.2


@pytest.fixture
def scheduler(
    settings: Settings,
    sessions: sessionmaker[Session],
    dispatcher: RecordingDispatcher,
    scheduler_tick_s: float,
) -> Iterator[Scheduler]:
    """The real schedule loop in a thread, with the real dispatcher, for one test."""
    loop = Scheduler(settings, sessions, dispatcher, tick_s=scheduler_tick_s)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,), name="scheduler", daemon=True)
    thread.start()
    yield loop
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "scheduler did not stop"
