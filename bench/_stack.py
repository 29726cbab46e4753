"""Throwaway services for the controller benchmarks: Redis, PostgreSQL, the API, an agent.

Every context manager stops what it started, on unix sockets or 127.0.0.1 only.
Not a benchmark itself: bench/submit_latency.py, fanout.py and ingest_rate.py import it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import redis

REDIS_SERVER = Path("/usr/bin/redis-server")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent
REDIS_USER = "fleettrace"


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time (only this process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server on a unix socket (no TCP) that requires auth, as in production:
    no default user, the controller's own ACL user. Yields the controller's unix:// URL."""
    sock = workdir / "redis.sock"
    password = secrets.token_urlsafe(24)
    config = workdir / "redis.conf"
    config.touch(mode=0o600)
    config.write_text(
        "user default off\n"
        f"user {REDIS_USER} on >{password} ~* &* +@all\n"
        f"port 0\nunixsocket {sock}\nunixsocketperm 700\n"
        f'save ""\nappendonly no\ndir {workdir}\n'
    )
    proc = subprocess.Popen(
        [str(REDIS_SERVER), str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"unix://{REDIS_USER}:{password}@{sock}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                return bool(redis.Redis.from_url(url).ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 10, "redis-server")
        yield url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[Callable[[], str]]:
    """A throwaway PostgreSQL 15 cluster on a unix socket, run as the postgres user.

    Durable defaults (fsync on, synchronous_commit on): what a production database does.
    Yields a function that creates an empty database and returns its URL.
    """
    import psycopg

    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pgdir = workdir / "pg"
    data, sockets = pgdir / "data", pgdir / "run"
    sockets.mkdir(parents=True)
    if as_postgres:
        os.chmod(workdir, 0o711)  # postgres must reach its own directory below ours
        shutil.chown(pgdir, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    port = free_port()
    pg_ctl = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [
            *as_postgres,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses='' -k {sockets} -p {port} -c max_connections=100"
    started = False
    try:
        subprocess.run(
            [*pg_ctl, "-l", str(pgdir / "postgres.log"), "-o", options, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
        )
        started = True

        def new_database() -> str:
            name = f"ft_{uuid.uuid4().hex[:12]}"
            conninfo = f"host={sockets} port={port} user=postgres dbname=postgres"
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return f"postgresql+psycopg://postgres@/{name}?host={sockets}&port={port}"

        yield new_database
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    env.update(FLEETTRACE_DATABASE_URL=database_url, FLEETTRACE_REDIS_URL=redis_url, **extra)
    return env


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
def agent_worker(host: str, redis_url: str, log: IO[bytes], workdir: Path) -> Iterator[None]:
    """A real agent: `fleettrace-agent worker --host NAME`, consuming host.NAME with the
    host's own Redis identity (`redis_url` from add_host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    env["FLEETTRACE_AGENT_CONFIG"] = str(workdir / "agent.env")  # no host config file
    env["FLEETTRACE_TRUSTED_KEYS"] = str(trusted_keys_file(workdir))
    env["FLEETTRACE_STATE_DIR"] = str(workdir / "agent-state")
    env["FLEETTRACE_REDIS_URL"] = redis_url
    proc = subprocess.Popen(
        [str(BIN / "fleettrace-agent"), "worker", "--host", host],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield
    finally:
        stop_process(proc, timeout_s=30)


def print_log_tails(workdir: Path, lines: int = 40) -> None:
    """After a failure: the end of every *.log the stack wrote, on stderr."""
    for path in sorted(workdir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        sys.stderr.write(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail) + "\n")
