"""The dev stack's supervisor on real processes: restarts, start limit, stop, and dying with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import supervise
from tests.controller.support import alive, stop_process, wait_for


class Supervised:
    def __init__(self, tmp: Path, *cmd: str, burst: int = 5) -> None:
        self.pidfile = tmp / "child.pid"
        self.log = tmp / "supervise.log"
        argv = [*supervise.command(self.pidfile), "--restart", "0.1", "--max-restart", "0.4"]
        argv += ["--burst", str(burst), "--interval", "60", "--stop-timeout", "5", "--", *cmd]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def child(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[Supervised]:
    supervised = Supervised(tmp_path, sys.executable, "-c", "import time; time.sleep(600)")
    yield supervised
    stop_process(supervised.proc)


def test_a_killed_child_is_restarted_under_a_new_pid(sleeper: Supervised) -> None:
    first = wait_for(sleeper.child, 20, "the first child")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := sleeper.child()) and p != first and p, 20, "a new child")
    assert second != first
    assert f"pid {first} exited (-9)" in sleeper.text()
    assert sleeper.proc.poll() is None


def test_term_stops_the_child_then_the_supervisor(sleeper: Supervised) -> None:
    child = wait_for(sleeper.child, 20, "the child")
    sleeper.proc.send_signal(signal.SIGTERM)
    assert sleeper.proc.wait(timeout=30) == 0
    assert not alive(child)
    assert not sleeper.pidfile.exists()


def test_a_killed_supervisor_takes_its_child_along(sleeper: Supervised) -> None:
    child = wait_for(sleeper.child, 20, "the child")
    sleeper.proc.kill()
    sleeper.proc.wait(timeout=10)
    wait_for(lambda: not alive(child), 20, f"child {child} to die with its supervisor")


def test_a_child_that_keeps_failing_hits_the_start_limit(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    supervised = Supervised(tmp_path, "sh", "-c", f"echo x >> {starts}; exit 3", burst=3)
    try:
        assert supervised.proc.wait(timeout=60) == 1
    finally:
        stop_process(supervised.proc)
    assert starts.read_text().count("x") == 3
    assert "start limit hit: 3 starts within 60s" in supervised.text()
