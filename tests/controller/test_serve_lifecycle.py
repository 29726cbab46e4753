"""Stopping `fleettrace serve` each way leaves no process behind: real processes, found in /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.controller.conftest import BIN
from tests.controller.support import alive, clean_env, free_port, stop_process, wait_for


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> set[int]:
    seen: set[int] = set()
    todo = children(pid)
    while todo:
        child = todo.pop()
        if child not in seen:
            seen.add(child)
            todo += children(child)
    return seen


@pytest.fixture
def serve(tmp_path: Path, redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`fleettrace serve` with everything: API and scheduler, ingest and bootstrap worker
    processes."""
    port = free_port()
    env = clean_env(
        FLEETTRACE_DATABASE_URL=f"sqlite:///{tmp_path / 'fleettrace.db'}",
        FLEETTRACE_REDIS_URL=redis_url,
        FLEETTRACE_API_HOST="127.0.0.1",
        FLEETTRACE_API_PORT=str(port),
        FLEETTRACE_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "fleettrace"), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
            except httpx.HTTPError:
                return False
            # The worker is up once Celery says so.
            return healthy and "ready." in log.read_text(errors="replace")

        wait_for(up, 90, "serve and its bootstrap worker to be ready", 0.2)
        yield proc
    finally:
        stop_process(proc)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name
)
def test_stopping_serve_leaves_no_process_behind(
    serve: subprocess.Popen[bytes], sig: signal.Signals
) -> None:
    tree = descendants(serve.pid)
    assert len(_children_running(serve.pid, "ingest")) == 1
    assert len(_children_running(serve.pid, "worker")) == 1
    serve.send_signal(sig)
    code = serve.wait(timeout=60)
    if sig is signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0, f"serve exited {code} after {sig.name}"

    deadline = time.monotonic() + 45
    while left := {pid for pid in tree if alive(pid)}:
        if time.monotonic() > deadline:
            cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in left}
            for pid in left:  # clean up after the failure, then report it
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"still running 45s after {sig.name} to serve: {cmdlines}")
        time.sleep(0.1)


def _children_running(pid: int, command: str) -> list[int]:
    """serve's children running `fleettrace <command>`."""
    found = []
    for child in children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command.encode() in argv and alive(child):
            found.append(child)
    return found


def test_an_ingest_process_that_dies_is_started_again(serve: subprocess.Popen[bytes]) -> None:
    (ingest,) = _children_running(serve.pid, "ingest")
    os.kill(ingest, signal.SIGKILL)

    def replaced() -> list[int] | None:
        now = [pid for pid in _children_running(serve.pid, "ingest") if pid != ingest]
        return now or None

    (again,) = wait_for(replaced, 30, "a new ingest process")
    assert not alive(ingest)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0
    wait_for(lambda: not alive(again), 30, "the new ingest process to stop with serve")
