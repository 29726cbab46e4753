"""What an agent trusts: the controller's public keys (a file it re-reads when it changes) and
the run ids it has accepted (persisted, so a restarted agent still refuses a replay)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node_agent.protocol import RefusalReason
from node_agent.signing import Action, Verified, VerifyError, parse_trusted_keys, verify

log = logging.getLogger(__name__)
PRUNE_EVERY = 256


class TrustedKeys:
    """The trusted-keys file, re-read when its size or mtime changes: rotation needs no restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._lock = threading.Lock()

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def keys(self) -> dict[str, Ed25519PublicKey]:
        stamp = self._current_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._keys = self._load()
            return self._keys

    def _load(self) -> dict[str, Ed25519PublicKey]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            log.error(
                "trusted keys %s unreadable (%s): this agent refuses ALL work", self.path, exc
            )
            return {}
        keys, problems = parse_trusted_keys(text)
        for problem in problems:
            log.error("trusted keys %s: %s (line skipped)", self.path, problem)
        if keys:
            log.info("trusting controller keys %s (from %s)", ", ".join(sorted(keys)), self.path)
        else:
            log.error("trusted keys %s holds no key: this agent refuses ALL work", self.path)
        return keys


class SeenRuns:
    """Accepted run ids with their expiry, appended one line each (`RUN_ID EXPIRES_AT`) to a
    file that is compacted when most of it has expired. Each id is kept until its envelope
    could no longer pass the expiry check. A write survives the agent's restart or crash;
    it is not fsynced (that cost ~20 ms a task here), so a power loss may forget the last few."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: dict[str, float] = self._read()
        self._lines = len(self._seen)
        self._since_prune = 0
        if self._seen:
            self.prune()

    def _read(self) -> dict[str, float]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            # Losing it would make every remembered run replayable: stop rather than forget.
            raise RuntimeError(f"cannot read the seen-runs file {self.path}: {exc}") from exc
        seen: dict[str, float] = {}
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            run_id, _, until = line.partition(" ")
            try:
                seen[run_id] = float(until)
            except ValueError:
                if number == len(lines):
                    continue  # a torn last line: the write that was cut short
                raise RuntimeError(f"seen-runs file {self.path}: bad line {number}") from None
        return seen

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        self._lines += 1

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{k} {t!r}\n" for k, t in self._seen.items())
        os.replace(tmp, self.path)
        self._lines = len(self._seen)

    def admit(self, key: str, keep_until: float, now: float | None = None) -> None:
        """Remember `key`, or refuse it as a replay if it is remembered already."""
        at = time.time() if now is None else now
        if not key or any(c.isspace() for c in key):
            raise VerifyError(
                RefusalReason.unreadable, f"run id {key!r} is empty or holds white space", key[:128]
            )
        with self._lock:
            if key in self._seen:
                raise VerifyError(
                    RefusalReason.replay, f"run id {key} was accepted before on this host"
                )
            self._seen[key] = keep_until
            self._append(f"{key} {keep_until!r}\n")
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                self.prune(at)

    def prune(self, now: float | None = None) -> None:
        """Forget expired ids; rewrite the file when most of its lines are stale."""
        at = time.time() if now is None else now
        self._since_prune = 0
        self._seen = {k: t for k, t in self._seen.items() if t >= at}
        if self._lines > 2 * len(self._seen) + PRUNE_EVERY // 4:
            self._compact()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._seen


class Gate:
    """Verify before anything else: signature, addressee, expiry, and (for runs) replay."""

    def __init__(self, *, host: str, keys: TrustedKeys, seen: SeenRuns, skew_s: float) -> None:
        self.host = host
        self.trusted = keys
        self.seen = seen
        self.skew_s = skew_s

    def admit_run(self, value: object) -> Verified:
        verified = verify(
            value, keys=self.trusted.keys(), host=self.host, action="run", skew_s=self.skew_s
        )
        try:
            self.seen.admit(verified.run_id, verified.envelope.expires_at + self.skew_s)
        except VerifyError as exc:  # a replay (or bad id) names the run the envelope was for
            exc.run_id = verified.run_id
            raise
        return verified

    def check(self, value: object, *, action: Action, run_id: str) -> Verified:
        """A cancel: signed for this host and this run; it is a state, read again and again."""
        verified = verify(
            value, keys=self.trusted.keys(), host=self.host, action=action, skew_s=self.skew_s
        )
        if verified.run_id != run_id:
            raise VerifyError(
                RefusalReason.unreadable,
                f"a cancel of run {verified.run_id} under run {run_id}",
                run_id,
            )
        return verified
