"""Keep one command running the way its systemd unit would: Restart=always with a backoff,
StartLimitBurst starts per StartLimitIntervalSec at most, TERM then KILL to stop it.

A local host's agent runs under this (`python -m devstack.supervise -- AGENT...`),
so an agent that dies comes back as it would on a real host. The child gets SIGTERM if this
process dies (PR_SET_PDEATHSIG): killing the supervisor never leaves an agent behind.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from controller.proctree import PR_SET_PDEATHSIG

log = logging.getLogger("fleettrace.supervise")


@dataclass(frozen=True)
class Policy:
    restart_s: float = 1.0  # first restart delay, doubled after each quick exit (RestartSec)
    max_restart_s: float = 30.0
    burst: int = 5  # starts allowed per interval before giving up (StartLimitBurst)
    interval_s: float = 60.0  # StartLimitIntervalSec; a run this long resets the backoff
    stop_s: float = 30.0  # TERM, then KILL after this long (TimeoutStopSec)


def _die_with_me(parent: int) -> Callable[[], None]:
    def prepare() -> None:  # runs in the child between fork and exec
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return prepare


class Supervisor:
    def __init__(self, cmd: Sequence[str], policy: Policy, pidfile: Path | None = None) -> None:
        self.cmd = list(cmd)
        self.policy = policy
        self.pidfile = pidfile
        self.stopping = False

    def stop(self, sig: int, frame: FrameType | None = None) -> None:
        self.stopping = True  # the wait loop passes it on to the child

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_child(self, child: subprocess.Popen[bytes]) -> int:
        stop_deadline: float | None = None
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping and stop_deadline is None:
                child.send_signal(signal.SIGTERM)
                stop_deadline = time.monotonic() + self.policy.stop_s
            elif stop_deadline is not None and time.monotonic() > stop_deadline:
                log.warning(
                    "pid %d ignored TERM for %gs: killing it", child.pid, self.policy.stop_s
                )
                child.kill()

    def run(self) -> int:
        """Until stopped (0), or until the start limit is hit (1)."""
        policy = self.policy
        starts: deque[float] = deque()
        delay = policy.restart_s
        while not self.stopping:
            now = time.monotonic()
            while starts and now - starts[0] > policy.interval_s:
                starts.popleft()
            if len(starts) >= policy.burst:
                log.error(
                    "start limit hit: %d starts within %gs; not restarting %s",
                    policy.burst,
                    policy.interval_s,
                    self.cmd[0],
                )
                return 1
            starts.append(now)
            child = subprocess.Popen(self.cmd, preexec_fn=_die_with_me(os.getpid()))
            if self.pidfile is not None:
                self.pidfile.write_text(f"{child.pid}\n")
            log.info("started %s: pid %d", self.cmd[0], child.pid)
            code = self._wait_child(child)
            ran = time.monotonic() - now
            if self.stopping:
                log.info("stopped pid %d (exit %d)", child.pid, code)
                break
            if ran >= policy.interval_s:
                delay = policy.restart_s
            log.warning(
                "pid %d exited (%d) after %.1fs: restarting in %gs", child.pid, code, ran, delay
            )
            self._sleep(delay)
            delay = min(delay * 2, policy.max_restart_s)
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)
        return 0


def command(pidfile: Path | None = None) -> list[str]:
    """The supervisor's command line, to put before `--` and the supervised command."""
    cmd = [sys.executable, "-m", "devstack.supervise"]
    return [*cmd, "--pidfile", str(pidfile)] if pidfile is not None else cmd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervise", description=__doc__)
    defaults = Policy()
    parser.add_argument("--pidfile", type=Path, help="where the running child's pid is kept")
    parser.add_argument("--restart", type=float, default=defaults.restart_s)
    parser.add_argument("--max-restart", type=float, default=defaults.max_restart_s)
    parser.add_argument("--burst", type=int, default=defaults.burst)
    parser.add_argument("--interval", type=float, default=defaults.interval_s)
    parser.add_argument("--stop-timeout", type=float, default=defaults.stop_s)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to keep running")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command to supervise after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervise: %(message)s")
    policy = Policy(args.restart, args.max_restart, args.burst, args.interval, args.stop_timeout)
    supervisor = Supervisor(cmd, policy, args.pidfile)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
