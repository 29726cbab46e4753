"""Throwaway services for the controller benchmarks: Redis, PostgreSQL, the API, an agent.

Every context manager stops what it started, on unix sockets or 127.0.0.1 only.
Not a benchmark itself: the controller benchmarks import it. Polling, stopping, ports,
Redis and PostgreSQL are the dev stack's harness (tools/devstack/harness.py), shared
with the tests.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import _main
import httpx
import redis
from sqlalchemy.orm import Session, sessionmaker

from devstack import harness
from devstack.harness import clean_env, free_port, stop_process, wait_for
from node_agent.wire import client_url

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server on a unix socket (no TCP) that requires auth, as in production:
    no default user, the controller's own ACL user. Yields the controller's unix:// URL."""
    with harness.redis_server(workdir) as server:
        yield server.url


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[Callable[[], str]]:
    """A throwaway PostgreSQL 15 cluster, durable (fsync and synchronous_commit on) as a
    production database is. Yields a function that creates an empty database, its URL."""
    with harness.postgres_cluster(workdir, durable=True, max_connections=100) as server:
        yield server.new_database


def migrated_sqlite(workdir: Path, name: str = "fleettrace.db") -> str:
    from controller.migrate import upgrade

    url = f"sqlite:///{workdir / name}"
    upgrade(url)
    return url


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or one in a throwaway PostgreSQL cluster."""
    from controller.migrate import upgrade

    if kind == "sqlite":
        yield migrated_sqlite(workdir)
        return
    with postgres_server(workdir) as new_database:
        url = new_database()
        upgrade(url)
        yield url


def create_token(database_url: str, role: str = "admin") -> str:
    from controller.auth import service
    from controller.auth.models import Role
    from controller.db import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            _, raw = service.create(session=session, name=f"bench-{role}", role=Role(role))
            session.commit()
    finally:
        engine.dispose()
    return raw


def controller_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return clean_env(FLEETTRACE_DATABASE_URL=database_url, FLEETTRACE_REDIS_URL=redis_url, **extra)


@contextlib.contextmanager
def serve(
    workdir: Path, database_url: str, redis_url: str, log: IO[bytes], **extra: str
) -> Iterator[str]:
    """`fleettrace serve` (API + ingest in one process) on 127.0.0.1; yields its base URL."""
    port = free_port()
    env = controller_env(
        database_url,
        redis_url,
        FLEETTRACE_API_HOST="127.0.0.1",
        FLEETTRACE_API_PORT=str(port),
        FLEETTRACE_KEYS_DIR=str(keys_dir(workdir)),  # made by serve's first start
    )
    env.update(extra)
    proc = subprocess.Popen(
        [str(BIN / "fleettrace"), "serve"],
        cwd=workdir,  # away from any .env in the repository
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"fleettrace serve exited with {proc.returncode}")
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "fleettrace serve")
        yield base
    finally:
        stop_process(proc)


def keys_dir(workdir: Path) -> Path:
    return workdir / "keys"


def trusted_keys_file(workdir: Path) -> Path:
    """The controller's public keys, as bootstrap installs them on a host (serve made them)."""
    from controller.keys.store import KeyStore

    path = workdir / "controller-keys.pub"
    path.write_text(KeyStore(keys_dir(workdir)).trusted_keys_text())
    return path


def add_host(base: str, token: str, name: str, **fields: object) -> str:
    """Add a host through the API; returns its own Redis URL (its identity, shown once)."""
    answer = httpx.post(
        f"{base}/v1/hosts",
        json={"name": name, **fields},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    answer.raise_for_status()
    url: str = answer.json()["join"]["redis_url"]
    return url


@contextlib.contextmanager
def agent_worker(
    host: str,
    redis_url: str,
    log: IO[bytes],
    workdir: Path,
    pythonpath: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real agent: `fleettrace-agent worker --host NAME`, consuming host.NAME with the
    host's own Redis identity (`redis_url` from add_host); with `pythonpath`, the agent
    (node_agent) found there instead of this checkout's."""
    env = clean_env(
        FLEETTRACE_AGENT_CONFIG=str(workdir / "agent.env"),  # no host config file
        FLEETTRACE_TRUSTED_KEYS=str(trusted_keys_file(workdir)),
        FLEETTRACE_STATE_DIR=str(workdir / "agent-state"),
        FLEETTRACE_REDIS_URL=redis_url,
    )
    argv = [str(BIN / "fleettrace-agent"), "worker", "--host", host]
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
        argv = [sys.executable, "-m", "node_agent.cli", *argv[1:]]
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=30)


@dataclass
class Controller:
    """What a controller benchmark's stack starts from: its Redis, its database, two tokens."""

    workdir: Path
    redis_url: str
    database_url: str
    operator: str
    admin: str

    @contextlib.contextmanager
    def readers(self) -> Iterator[tuple[sessionmaker[Session], redis.Redis]]:
        """Direct reads of the database and Redis (what the API does not show), closed after."""
        from controller.db import make_engine, make_sessionmaker

        engine = make_engine(self.database_url)
        client = redis.Redis.from_url(client_url(self.redis_url))
        try:
            yield make_sessionmaker(engine), client
        finally:
            client.close()
            engine.dispose()

    @contextlib.contextmanager
    def serve(self, **extra: str) -> Iterator[str]:
        """`fleettrace serve` on this stack, logging to serve.log; yields its base URL."""
        with (
            open(self.workdir / "serve.log", "wb") as log,
            serve(self.workdir, self.database_url, self.redis_url, log, **extra) as base,
        ):
            yield base

    def api(self, base: str, timeout_s: float) -> httpx.Client:
        """An API client with the operator's token."""
        headers = {"Authorization": f"Bearer {self.operator}"}
        return httpx.Client(base_url=base, headers=headers, timeout=timeout_s)


@contextlib.contextmanager
def controller(prefix: str, db: str) -> Iterator[Controller]:
    """A scratch dir with Redis and a migrated database in it (log tails on failure)."""
    with (
        _main.scratch(prefix) as workdir,
        redis_server(workdir) as redis_url,
        database(db, workdir) as database_url,
    ):
        operator = create_token(database_url, "operator")
        admin = create_token(database_url, "admin")
        yield Controller(workdir, redis_url, database_url, operator, admin)


def wait_online(api: httpx.Client, hosts: int, timeout_s: float = 120) -> None:
    """Until `hosts` hosts are online (each has heartbeated)."""

    def all_online() -> bool:
        data = api.get("/v1/hosts").json()["data"]
        return sum(h["state"] == "online" for h in data) >= hosts

    wait_for(all_online, timeout_s, f"{hosts} hosts online", every_s=0.5)
