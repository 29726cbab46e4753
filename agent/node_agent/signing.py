"""Signed work: the controller signs each task and cancel (Ed25519); agents verify before acting.

The signature covers the canonical JSON of every envelope field but itself, so the addressee,
the action, the run id, the times and the request travel together: moving a task to another
host's queue, changing its request or extending its life breaks the signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from node_agent.protocol import RefusalReason

Action = Literal["run", "cancel"]
# Binds a signature to this use: a signature over the same bytes elsewhere means nothing here.
DOMAIN = b"fleettrace-signed-work-v1\n"
KEY_ID_HEX = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class VerifyError(Exception):
    """Work an agent must refuse; `reason` is what its Refusal event says."""

    def __init__(self, reason: RefusalReason, detail: str, run_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.run_id = run_id


class SignedEnvelope(BaseModel):
    """What a task's single argument and a cancel key's value hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    key_id: str = Field(min_length=1, max_length=64)
    host: str = Field(min_length=1, max_length=253)
    run_id: str = Field(min_length=1, max_length=128)
    action: Action
    issued_at: float
    expires_at: float
    payload: dict[str, Any] = Field(default_factory=dict)
    signature: str = Field(max_length=128)

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.model_dump(exclude={"signature"}))


def canonical(value: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def signed_bytes(fields: Mapping[str, Any]) -> bytes:
    return DOMAIN + canonical(dict(fields))


def key_id(public: Ed25519PublicKey) -> str:
    """A key's id is its fingerprint: a trusted-keys line cannot name another key."""
    return hashlib.sha256(public_bytes(public)).hexdigest()[:KEY_ID_HEX]


def public_bytes(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_line(public: Ed25519PublicKey) -> str:
    """One line of a trusted-keys file: `KEY_ID BASE64`."""
    return f"{key_id(public)} {base64.b64encode(public_bytes(public)).decode()}"


def sign(
    private: Ed25519PrivateKey,
    *,
    host: str,
    run_id: str,
    action: Action,
    payload: Mapping[str, Any],
    ttl_s: float,
    now: float | None = None,
) -> SignedEnvelope:
    issued = time.time() if now is None else now
    fields: dict[str, Any] = {
        "v": 1,
        "key_id": key_id(private.public_key()),
        "host": host,
        "run_id": run_id,
        "action": action,
        "issued_at": issued,
        "expires_at": issued + ttl_s,
        "payload": dict(payload),
    }
    signature = private.sign(signed_bytes(fields))
    return SignedEnvelope(**fields, signature=base64.b64encode(signature).decode())


def parse_trusted_keys(text: str) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """Keys from a trusted-keys file (`KEY_ID BASE64` per line, `#` comments) and the problems
    with lines that were skipped, for the log."""
    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.append(f"line {number}: want 'KEY_ID BASE64'")
            continue
        kid, encoded = parts
        try:
            raw_key = base64.b64decode(encoded, validate=True)
            if len(raw_key) != PUBLIC_KEY_BYTES:
                raise ValueError(f"{len(raw_key)} bytes, not {PUBLIC_KEY_BYTES}")
            public = Ed25519PublicKey.from_public_bytes(raw_key)
        except (ValueError, binascii.Error) as exc:
            problems.append(f"line {number}: not an Ed25519 public key ({exc})")
            continue
        if key_id(public) != kid:
            problems.append(f"line {number}: key id {kid} is not this key's ({key_id(public)})")
            continue
        keys[kid] = public
    return keys, problems


@dataclass(frozen=True)
class Verified:
    envelope: SignedEnvelope

    @property
    def run_id(self) -> str:
        return self.envelope.run_id

    @property
    def payload(self) -> dict[str, Any]:
        return self.envelope.payload


def _claimed_run_id(value: object) -> str | None:
    """The run id an unverified message claims, cut to size: for the refusal's log line only."""
    if isinstance(value, Mapping):
        claimed = value.get("run_id")
        if isinstance(claimed, str):
            return claimed[:128]
    return None


def parse(value: object) -> SignedEnvelope:
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            raise VerifyError(RefusalReason.unreadable, "not JSON") from None
    run_id = _claimed_run_id(value)
    if not isinstance(value, Mapping):
        raise VerifyError(
            RefusalReason.unreadable, f"a {type(value).__name__}, not a signed envelope", run_id
        )
    if "signature" not in value:
        raise VerifyError(RefusalReason.bad_signature, "unsigned", run_id)
    try:
        return SignedEnvelope.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "envelope"
        raise VerifyError(
            RefusalReason.unreadable, f"bad envelope: {where}: {first['msg']}", run_id
        ) from None


def verify(
    value: object,
    *,
    keys: Mapping[str, Ed25519PublicKey],
    host: str,
    action: Action,
    skew_s: float,
    now: float | None = None,
) -> Verified:
    """Signature, addressee, action and time; replay is the caller's (it owns the state)."""
    envelope = parse(value)
    run_id = envelope.run_id
    public = keys.get(envelope.key_id)
    if public is None:
        trusted = ", ".join(sorted(keys)) or "none"
        raise VerifyError(
            RefusalReason.unknown_key,
            f"signed by key {envelope.key_id}; trusted: {trusted}",
            run_id,
        )
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
    except (ValueError, binascii.Error):
        raise VerifyError(RefusalReason.bad_signature, "signature is not base64", run_id) from None
    if len(signature) != SIGNATURE_BYTES:
        raise VerifyError(
            RefusalReason.bad_signature, f"signature has {len(signature)} bytes", run_id
        )
    try:
        public.verify(signature, envelope.signed_bytes())
    except InvalidSignature:
        raise VerifyError(
            RefusalReason.bad_signature, f"signature does not match (key {envelope.key_id})", run_id
        ) from None
    # Signed from here on: what it says is what the controller said.
    if envelope.host != host:
        raise VerifyError(
            RefusalReason.wrong_host, f"addressed to {envelope.host}, this is {host}", run_id
        )
    if envelope.action != action:
        raise VerifyError(
            RefusalReason.unreadable, f"a {envelope.action} where a {action} was expected", run_id
        )
    at = time.time() if now is None else now
    if at > envelope.expires_at + skew_s:
        raise VerifyError(
            RefusalReason.expired, f"expired {at - envelope.expires_at:.1f}s ago", run_id
        )
    if envelope.issued_at > at + skew_s:
        raise VerifyError(
            RefusalReason.expired, f"issued {envelope.issued_at - at:.1f}s in the future", run_id
        )
    if action == "run" and envelope.payload.get("run_id") != run_id:
        raise VerifyError(
            RefusalReason.unreadable, "the request's run id is not the envelope's", run_id
        )
    return Verified(envelope)
