"""A redis-server the tests may SIGKILL and start again on the same socket and data directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import redis

from tests.controller.conftest import REDIS_SERVER
from tests.controller.support import missing, stop_process, wait_for


class RedisProcess:
    """AOF on (appendfsync everysec), as the dev stack runs it."""

    def __init__(self, workdir: Path) -> None:
        if not REDIS_SERVER.exists():
            missing(f"{REDIS_SERVER} (apt install redis-server)")
        self.workdir = workdir
        self.sock = workdir / "redis.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(str(REDIS_SERVER), "--port", "0", "--dir", str(self.workdir)),
                *("--unixsocket", str(self.sock), "--unixsocketperm", "700", "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "everysec"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {proc.returncode}")
            try:
                with redis.Redis.from_url(self.url) as client:
                    return bool(client.ping())
            except redis.ConnectionError:  # BusyLoadingError too: still reading its AOF
                return False

        wait_for(up, 15, "redis-server to answer")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; what the AOF holds is what comes back."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Lose every byte Redis had (a restart without persistence)."""
        assert self.proc is None, "stop it first"
        for path in self.workdir.iterdir():
            if path != self.sock:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
