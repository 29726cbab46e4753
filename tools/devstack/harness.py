"""Processes and throwaway services for the dev stack, the tests and the benchmarks.

Polling, stopping a process group, a free port, a private redis-server and a PostgreSQL
cluster: written once here and imported by `devstack`, `tests/` and `bench/`.
It depends on nothing else in the repository (stdlib, redis, psycopg when asked for a
cluster), so it moves as it is wherever the dev stack goes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

REDIS_SERVER = Path("/usr/bin/redis-server")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_USER = "fleettrace"  # the controller's own ACL user; agents get theirs from it

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.05
) -> T:
    """Poll until check() is truthy and return that value; TimeoutError names what did not
    happen. An exception from check() (a process that died) ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(every_s)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM the process, then SIGKILL whatever is left of its process group (it was
    started with start_new_session, so that group is its own)."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without its FLEETTRACE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTRACE_")}
    env.update(extra)
    return env


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def task_envelope(raw: bytes) -> tuple[str, dict[str, Any]]:
    """(task id, the signed envelope) of a run_trace task message as kombu's Redis transport
    keeps it: JSON whose base64 body is Celery's protocol 2 `[args, kwargs, embed]`. What an
    emulated agent (tests, benchmarks) pops from a host's queue."""
    from node_agent.wire import TASK_RUN_TRACE

    message = json.loads(raw)
    headers = message["headers"]
    if headers.get("task") != TASK_RUN_TRACE:
        raise ValueError(f"not a {TASK_RUN_TRACE} task: {headers.get('task')!r}")
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = json.loads(body)
    return str(headers["id"]), args[0]


# -- Redis ------------------------------------------------------------------------------------


def redis_conf(
    *,
    data_dir: Path,
    sock: Path | None,
    password: str | None,
    aof: bool,
    extra: Sequence[str] = (),
    tcp: tuple[str, int] | None = None,
) -> str:
    """A redis.conf with no plain TCP port (a unix socket, or what `extra` opens) unless `tcp`
    (address, port) asks for one; with a password, auth as in production (no default user,
    the controller's ACL user); with aof, queued work survives a restart."""
    users = ["user default off", f"user {REDIS_USER} on >{password} ~* &* +@all"]
    unix = [f"unixsocket {sock}", "unixsocketperm 700"]
    persistence = ["appendonly yes", "appendfsync everysec"] if aof else ["appendonly no"]
    lines = [
        *(users if password is not None else []),
        *((f"bind {tcp[0]}", f"port {tcp[1]}") if tcp is not None else ("port 0",)),
        *(unix if sock is not None else []),
        *('save ""', f"dir {data_dir}"),
        *persistence,
        *extra,
    ]
    return "".join(line + "\n" for line in lines)


def redis_answers(url: str) -> bool:
    """Whether the Redis at `url` answers PING (not while it still loads its AOF)."""
    try:
        with redis.Redis.from_url(url) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A private redis-server in `workdir` that may be SIGKILLed and started again on the same
    socket and files; `url` is the controller's (with its password when auth is on)."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: bool = True,
        aof: bool = False,
        unix_socket: bool = True,
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.sock = workdir / "redis.sock"
        self.password = secrets.token_urlsafe(24) if auth else None
        self.url = (
            f"unix://{REDIS_USER}:{self.password}@{self.sock}" if auth else f"unix://{self.sock}"
        )
        self.ping_url = self.url  # a server on TLS only is asked another way
        self.config = workdir / "redis.conf"
        self.log = workdir / "redis.log"
        self._kept = {self.sock, self.config, self.log}
        sock = self.sock if unix_socket else None
        self.config.touch(mode=0o600)
        self.config.write_text(
            redis_conf(data_dir=workdir, sock=sock, password=self.password, aof=aof, extra=extra)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [str(REDIS_SERVER), str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.proc = proc

        def up() -> bool:
            if proc.poll() is not None:
                tail = log_tail(self.log)
                raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{tail}")
            return redis_answers(self.ping_url)

        wait_for(up, timeout_s, "redis-server to answer")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; what the AOF holds is what comes back."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Lose every byte Redis had (a restart without persistence)."""
        assert self.proc is None, "stop it first"
        for path in self.workdir.iterdir():
            if path not in self._kept:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextlib.contextmanager
def redis_server(workdir: Path, **options: Any) -> Iterator[RedisServer]:
    """A started RedisServer (options as RedisServer's), stopped afterwards."""
    server = RedisServer(workdir, **options)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- PostgreSQL -------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    socket_dir: Path
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """An empty database of its own; returns its URL."""
        import psycopg

        name = f"ft_{uuid.uuid4().hex[:12]}"
        conninfo = f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


@contextlib.contextmanager
def postgres_cluster(
    workdir: Path, *, durable: bool, max_connections: int = 100
) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 cluster in `workdir`/pg on a unix socket, run as the
    postgres user when we are root (it refuses to run as root). Durable keeps fsync and
    synchronous_commit on, as production does; otherwise both are off, for speed."""
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
    options = f"-c listen_addresses='' -k {sockets} -p {port} -c max_connections={max_connections}"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = False
    try:
        subprocess.run(
            [
                *(*as_postgres, str(PG_BIN / "initdb"), "-D", str(data)),
                *("-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"),
            ],
            check=True,
            capture_output=True,
        )
        log = pgdir / "postgres.log"
        try:
            subprocess.run(
                [*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
                check=True,
                capture_output=True,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"PostgreSQL did not start: {exc.stderr!r}\n{log_tail(log, 40)}"
            ) from None
        started = True
        yield PostgresServer(socket_dir=sockets, port=port)
    finally:
        if started:
            # A durable cluster shuts down cleanly; a throwaway one need not write anything.
            mode = "fast" if durable else "immediate"
            subprocess.run([*pg_ctl, "-m", mode, "-w", "stop"], capture_output=True)
