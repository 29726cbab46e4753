"""The controller's key store and `fleettrace keys`: modes, rotation, retirement, export."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from controller.keys.store import KeysError, KeyStore
from node_agent.signing import parse_trusted_keys, sign, verify
from tests.controller.conftest import BIN
from tests.controller.support import clean_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_one_private_key_0600_in_a_0700_dir_and_is_idempotent(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    kid, created = store.init()
    assert created and store.init() == (kid, False)
    assert mode(store.dir) == 0o700
    assert mode(store.dir / f"{kid}.key") == 0o600
    assert store.ids() == [kid]


def test_prepare_then_rotate_keeps_the_old_key_trusted_until_retired(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    old, _ = store.init()
    old_key = store.signing_key()
    new = store.prepare()
    assert store.prepare() == new, "a second prepare reuses the pending key"
    assert store.signing_id() == old
    trusted, problems = parse_trusted_keys(store.trusted_keys_text())
    assert set(trusted) == {old, new} and not problems
    assert store.rotate() == (new, old)
    assert store.pending() is None
    signed_old = sign(old_key, host="h", run_id="r", action="cancel", payload={}, ttl_s=60)
    signed_new = sign(
        store.signing_key(), host="h", run_id="r", action="cancel", payload={}, ttl_s=60
    )
    for envelope in (signed_old, signed_new):
        verify(envelope.model_dump(), keys=trusted, host="h", action="cancel", skew_s=0)
    with pytest.raises(KeysError, match="rotate first"):
        store.retire(new)
    store.retire(old)
    assert set(parse_trusted_keys(store.trusted_keys_text())[0]) == {new}
    with pytest.raises(KeysError, match="no key"):
        store.retire(old)


def test_rotate_without_prepare_makes_a_new_signing_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    old, _ = store.init()
    new, previous = store.rotate()
    assert previous == old and new != old and store.signing_id() == new
    assert [k.key_id for k in store.list()] == [new, old]


def test_another_process_rotating_is_seen_by_a_running_signer(tmp_path: Path) -> None:
    signer = KeyStore(tmp_path / "keys")
    signer.init()
    first = signer.signing_key()
    new, _ = KeyStore(tmp_path / "keys").rotate()
    assert signer.signing_key() is not first
    assert signer.signing_id() == new


def test_signing_without_keys_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="fleettrace keys init"):
        KeyStore(tmp_path / "none").signing_key()


def fleettrace(*args: str, keys_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleettrace"), "keys", *args],
        capture_output=True,
        text=True,
        env=clean_env(FLEETTRACE_KEYS_DIR=str(keys_dir)),
        cwd=keys_dir.parent,
        timeout=60,
        check=False,
    )


def test_the_cli_inits_lists_rotates_exports_and_retires(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    missing = fleettrace("export", keys_dir=keys_dir)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"fleettrace: error: no signing key in {keys_dir}: run `fleettrace keys init`"
    ]
    init = fleettrace("init", keys_dir=keys_dir)
    assert init.returncode == 0 and init.stdout.startswith("created: signing key ")
    first = init.stdout.split()[3]
    assert fleettrace("init", keys_dir=keys_dir).stdout.startswith(f"exists: signing key {first}")
    prepared = fleettrace("rotate", "--prepare", keys_dir=keys_dir)
    second = prepared.stdout.split()[2].rstrip(":")
    listed = fleettrace("list", keys_dir=keys_dir).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["KEY_ID", first, second]
    assert listed[1].endswith("yes") and listed[2].endswith("next")
    out = tmp_path / "controller-keys.pub"
    assert fleettrace("export", "-o", str(out), keys_dir=keys_dir).returncode == 0
    assert set(parse_trusted_keys(out.read_text())[0]) == {first, second}
    assert fleettrace("rotate", keys_dir=keys_dir).returncode == 0
    refused = fleettrace("retire", second, keys_dir=keys_dir)
    assert refused.returncode == 1 and "rotate first" in refused.stderr
    assert fleettrace("retire", first, keys_dir=keys_dir).returncode == 0
    assert set(parse_trusted_keys(fleettrace("export", keys_dir=keys_dir).stdout)[0]) == {second}
    assert sorted(os.listdir(keys_dir)) == sorted(["signing", f"{second}.key"])
