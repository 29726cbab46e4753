"""Keys on disk: one PEM file per private key (mode 0600, in a 0700 directory) and a pointer
naming the signing key. Every key in the directory is trusted; retiring a key deletes it.

Layout of the keys directory (FLEETTRACE_KEYS_DIR):
    <key_id>.key   Ed25519 private key, PKCS#8 PEM, 0600
    signing        the key id tasks are signed with
    pending        a prepared key id that the next `rotate` promotes (optional)
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from controller.errors import ControllerError
from node_agent.signing import key_id, public_line

log = logging.getLogger(__name__)
POINTER = "signing"
PENDING = "pending"
SUFFIX = ".key"


class KeysError(ControllerError):
    """The keys directory cannot do what was asked; the message says what to run."""

    status = 503


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    created: datetime
    signing: bool
    public_line: str


class KeyStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int], Ed25519PrivateKey] | None = None

    # -- reading ------------------------------------------------------------------------------

    def _path(self, kid: str) -> Path:
        return self.dir / f"{kid}{SUFFIX}"

    def _load(self, path: Path) -> Ed25519PrivateKey:
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeysError(f"{path} is not an Ed25519 key")
        if key_id(key.public_key()) != path.name.removesuffix(SUFFIX):
            raise KeysError(f"{path} holds another key than its name says")
        return key

    def ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name.removesuffix(SUFFIX) for p in self.dir.glob(f"*{SUFFIX}"))

    def signing_id(self) -> str | None:
        try:
            kid = (self.dir / POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        return kid or None

    def signing_key(self) -> Ed25519PrivateKey:
        """The key to sign with now; re-read when the pointer changes (another process rotated)."""
        pointer = self.dir / POINTER
        try:
            st = pointer.stat()
        except FileNotFoundError:
            raise KeysError(f"no signing key in {self.dir}: run `fleettrace keys init`") from None
        stamp = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if self._cached is None or self._cached[0] != stamp:
                kid = pointer.read_text().strip()
                path = self._path(kid)
                if not path.exists():
                    raise KeysError(f"the signing key {kid} is missing from {self.dir}")
                self._cached = (stamp, self._load(path))
            return self._cached[1]

    def list(self) -> list[KeyInfo]:
        signing = self.signing_id()
        infos = []
        for kid in self.ids():
            path = self._path(kid)
            created = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
            public = public_line(self._load(path).public_key())
            infos.append(KeyInfo(kid, created, kid == signing, public))
        # The signing key first, then newest first.
        return sorted(infos, key=lambda k: (not k.signing, -k.created.timestamp()))

    def trusted_keys_text(self) -> str:
        """What agents trust: every key here (the file bootstrap and the dev stack install)."""
        lines = ["# fleettrace controller keys: KEY_ID BASE64 (raw Ed25519 public key)"]
        lines += [k.public_line for k in self.list()]
        return "\n".join(lines) + "\n"

    # -- changing -----------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def _new_key(self) -> str:
        self._ensure_dir()
        key = Ed25519PrivateKey.generate()
        kid = key_id(key.public_key())
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        # Created 0600 from the first byte: the key is never readable by others, even briefly.
        fd = os.open(self._path(kid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        return kid

    def _point(self, kid: str, name: str = POINTER) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(kid + "\n")
        os.replace(tmp, self.dir / name)

    def init(self) -> tuple[str, bool]:
        """The signing key's id, and whether it was made now (idempotent)."""
        current = self.signing_id()
        if current is not None and self._path(current).exists():
            return current, False
        kid = self._new_key()
        self._point(kid)
        log.info("created signing key %s in %s", kid, self.dir)
        return kid, True

    def prepare(self) -> str:
        """A new key, trusted (in the exported file) but not signing yet."""
        if self.signing_id() is None:
            raise KeysError(f"no signing key in {self.dir}: run `fleettrace keys init`")
        pending = self.pending()
        if pending is not None:
            return pending
        kid = self._new_key()
        self._point(kid, PENDING)
        log.info("prepared key %s (trusted, not signing yet)", kid)
        return kid

    def pending(self) -> str | None:
        """The prepared key that `rotate` will promote, if any."""
        try:
            kid = (self.dir / PENDING).read_text().strip()
        except FileNotFoundError:
            return None
        return kid if kid in self.ids() and kid != self.signing_id() else None

    def rotate(self) -> tuple[str, str | None]:
        """Make the prepared key (or a new one) the signing key; (new id, previous id)."""
        previous = self.signing_id()
        if previous is None:
            raise KeysError(f"no signing key in {self.dir}: run `fleettrace keys init`")
        kid = self.pending() or self._new_key()
        self._point(kid)
        (self.dir / PENDING).unlink(missing_ok=True)
        log.info("signing key is now %s (was %s, still trusted)", kid, previous)
        return kid, previous

    def retire(self, kid: str) -> None:
        if kid not in self.ids():
            raise KeysError(f"no key {kid} in {self.dir}")
        if kid == self.signing_id():
            raise KeysError(f"{kid} is the signing key: rotate first")
        self._path(kid).unlink()
        if self.pending() is None:
            (self.dir / PENDING).unlink(missing_ok=True)
        log.info("retired key %s", kid)
