"""Signing and verification edge cases, the trusted-keys file, and the persisted replay set."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_agent.signing import (
    SignedEnvelope,
    VerifyError,
    parse_trusted_keys,
    public_line,
    sign,
    verify,
)
from node_agent.trust import Gate, SeenRuns, TrustedKeys

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
NOW = 1_800_000_000.0
SKEW = 30.0


def keys() -> dict[str, Any]:
    return {public_line(KEY.public_key()).split()[0]: KEY.public_key()}


def envelope(**kw: Any) -> dict[str, Any]:
    key = kw.pop("key", KEY)
    fields: dict[str, Any] = {
        "host": "web-1",
        "run_id": "r1",
        "action": "run",
        "payload": {"run_id": "r1", "program": "syscalls", "duration_s": 2.5},
        "ttl_s": 60.0,
        "now": NOW,
    }
    fields.update(kw)
    return sign(key, **fields).model_dump(mode="json")


def check(value: object, *, at: float = NOW, host: str = "web-1", action: str = "run") -> Any:
    return verify(value, keys=keys(), host=host, action=action, skew_s=SKEW, now=at)  # type: ignore[arg-type]


def test_a_good_envelope_verifies_after_a_json_round_trip() -> None:
    wire = json.loads(json.dumps(envelope()))
    assert check(wire).payload["duration_s"] == 2.5
    assert check(json.dumps(envelope()).encode()).run_id == "r1"


def _swap(field: str, value: Any) -> Callable[[dict[str, Any]], object]:
    return lambda e: {**e, field: value}


REFUSED: dict[str, tuple[Callable[[dict[str, Any]], object], str, dict[str, Any]]] = {
    "tampered payload": (
        _swap("payload", {"run_id": "r1", "program": "custom"}),
        "bad_signature",
        {},
    ),
    "tampered expiry": (_swap("expires_at", NOW + 10**6), "bad_signature", {}),
    "tampered host": (_swap("host", "web-2"), "bad_signature", {"host": "web-2"}),
    "truncated signature": (
        lambda e: {**e, "signature": e["signature"][:-8]},
        "bad_signature",
        {},
    ),
    "signature not base64": (_swap("signature", "!!!"), "bad_signature", {}),
    "signature of zeros": (
        _swap("signature", base64.b64encode(bytes(64)).decode()),
        "bad_signature",
        {},
    ),
    "no signature": (
        lambda e: {k: v for k, v in e.items() if k != "signature"},
        "bad_signature",
        {},
    ),
    "unknown key": (lambda e: envelope(key=OTHER), "unknown_key", {}),
    "key id swapped to a trusted one": (
        lambda e: {**envelope(key=OTHER), "key_id": e["key_id"]},
        "bad_signature",
        {},
    ),
    "addressed to another host": (lambda e: e, "wrong_host", {"host": "web-2"}),
    "a cancel offered as a run": (
        lambda e: envelope(action="cancel", payload={}),
        "unreadable",
        {},
    ),
    "expired beyond the skew": (lambda e: e, "expired", {"at": NOW + 60 + SKEW + 1}),
    "issued in the future beyond the skew": (lambda e: e, "expired", {"at": NOW - SKEW - 1}),
    "payload names another run": (
        lambda e: envelope(payload={"run_id": "r2", "program": "syscalls", "duration_s": 1}),
        "unreadable",
        {},
    ),
    "extra field": (_swap("sneaky", 1), "unreadable", {}),
    "not an object": (lambda e: [e], "unreadable", {}),
    "not JSON": (lambda e: b"\xff{", "unreadable", {}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(case: str) -> None:
    change, reason, where = REFUSED[case]
    with pytest.raises(VerifyError) as caught:
        check(change(envelope()), **where)
    assert caught.value.reason.value == reason, caught.value.detail


@pytest.mark.parametrize("at", [NOW - SKEW + 1, NOW + 60 + SKEW - 1])
def test_clock_skew_within_the_allowance_is_accepted(at: float) -> None:
    assert check(envelope(), at=at).run_id == "r1"


def test_the_refusal_names_the_claimed_run_id_cut_to_size() -> None:
    with pytest.raises(VerifyError) as caught:
        check({"run_id": "x" * 500})
    assert caught.value.run_id == "x" * 128


def test_trusted_keys_file_skips_bad_lines_and_names_them() -> None:
    good = public_line(KEY.public_key())
    other_id = public_line(OTHER.public_key()).split()[0]
    text = "\n".join(
        [
            "# comment",
            "",
            good,
            f"{other_id} {good.split()[1]}",  # an id that is not this key's
            "onlyone",
            "abc notbase64!",
            f"abc {base64.b64encode(b'short').decode()}",
        ]
    )
    found, problems = parse_trusted_keys(text)
    assert list(found) == [good.split()[0]]
    assert [p.split(":")[0] for p in problems] == ["line 4", "line 5", "line 6", "line 7"]


def test_trusted_keys_are_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "controller-keys.pub"
    trusted = TrustedKeys(path)
    assert trusted.keys() == {}
    path.write_text(public_line(KEY.public_key()) + "\n")
    assert len(trusted.keys()) == 1
    path.write_text(public_line(KEY.public_key()) + "\n" + public_line(OTHER.public_key()) + "\n")
    assert len(trusted.keys()) == 2


def test_seen_runs_survive_a_restart_and_expired_ones_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "state" / "seen-runs.web-1"
    now = time.time()
    seen = SeenRuns(path)
    seen.admit("old", keep_until=now + 0.2)
    seen.admit("r1", keep_until=now + 100)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(VerifyError) as caught:
        SeenRuns(path).admit("r1", keep_until=now + 100)
    assert caught.value.reason.value == "replay"
    time.sleep(0.3)
    again = SeenRuns(path)  # a restart forgets what expired
    assert "old" not in again and "r1" in again


def test_many_runs_keep_the_file_small(tmp_path: Path) -> None:
    path = tmp_path / "seen"
    seen = SeenRuns(path)
    for i in range(2000):
        seen.admit(f"run-{i}", keep_until=NOW + i, now=NOW + i)
    assert len(path.read_text().splitlines()) < 600
    assert "run-1999" in SeenRuns(path)


def test_a_torn_last_line_is_ignored_and_a_corrupt_file_stops_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "seen"
    path.write_text(f"r1 {time.time() + 100!r}\nr2 17")
    assert "r1" in SeenRuns(path) and "r2" not in SeenRuns(path)
    path.write_text("r1 nonsense\nr2 17\n")
    with pytest.raises(RuntimeError, match="seen-runs"):
        SeenRuns(path)


def test_the_gate_refuses_a_second_run_with_the_same_id(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.pub"
    keys_file.write_text(public_line(KEY.public_key()) + "\n")
    gate = Gate(
        host="web-1", keys=TrustedKeys(keys_file), seen=SeenRuns(tmp_path / "s.json"), skew_s=SKEW
    )
    now = time.time()
    first = envelope(now=now)
    assert gate.admit_run(first).run_id == "r1"
    with pytest.raises(VerifyError) as caught:
        gate.admit_run(envelope(now=now + 1))  # signed again, same run id
    assert caught.value.reason.value == "replay" and caught.value.run_id == "r1"


def test_an_agent_with_no_trusted_keys_refuses_everything(tmp_path: Path) -> None:
    gate = Gate(
        host="web-1",
        keys=TrustedKeys(tmp_path / "missing.pub"),
        seen=SeenRuns(tmp_path / "s.json"),
        skew_s=SKEW,
    )
    with pytest.raises(VerifyError) as caught:
        gate.admit_run(envelope(now=time.time()))
    assert caught.value.reason.value == "unknown_key" and "trusted: none" in caught.value.detail


def test_the_envelope_model_round_trips() -> None:
    env = SignedEnvelope.model_validate(envelope())
    assert env.signed_bytes().startswith(b"fleettrace-signed-work-v1\n")
