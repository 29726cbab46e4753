"""What an agent trusts: the controller's public keys (a file it re-reads when it changes) and
the run ids it has accepted (persisted, so a restarted agent still refuses a replay)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node_agent.signing import Action, Replay, Unreadable, Verified, parse_trusted_keys, verify

log = logging.getLogger(__name__)


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
    """Accepted run ids with their expiry, in one JSON file rewritten atomically on each accept.
    An id is kept until its envelope could no longer pass the expiry check, then pruned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: dict[str, float] = self._read()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Losing it would make every remembered run replayable: stop rather than forget.
            raise RuntimeError(f"cannot read the seen-runs file {self.path}: {exc}") from exc
        return {str(k): float(v) for k, v in data.items()}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self._seen, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def admit(self, key: str, keep_until: float, now: float | None = None) -> None:
        """Remember `key`, or raise Replay if it is remembered already."""
        at = time.time() if now is None else now
        with self._lock:
            if key in self._seen:
                raise Replay(f"run id {key} was accepted before on this host")
            self._seen = {k: t for k, t in self._seen.items() if t >= at}
            self._seen[key] = keep_until
            self._write()

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
        except Replay as exc:
            exc.run_id = verified.run_id
            raise
        return verified

    def check(self, value: object, *, action: Action, run_id: str) -> Verified:
        """A cancel: signed for this host and this run; it is a state, read again and again."""
        verified = verify(
            value, keys=self.trusted.keys(), host=self.host, action=action, skew_s=self.skew_s
        )
        if verified.run_id != run_id:
            raise Unreadable(f"a cancel of run {verified.run_id} under run {run_id}", run_id)
        return verified
