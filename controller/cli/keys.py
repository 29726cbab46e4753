"""`fleettrace keys`: the controller's signing keys (init, list, rotate, retire, export)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.cli.common import with_example
from controller.cli.errors import CliError
from controller.keys.store import KeysError, KeyStore
from controller.settings import get_settings

EPILOG = """\
zero-downtime rotation:
  fleettrace keys rotate --prepare      # a new key, trusted but not signing yet
  fleettrace hosts bootstrap --selector role=web   # (or copy `keys export`) to every host
  fleettrace keys rotate                # the prepared key signs from now on
  fleettrace keys retire OLD_KEY_ID     # once no task signed by it can still be queued

example:
  $ fleettrace keys list
  KEY_ID            CREATED                    SIGNING
  9c1f0e5b7a2d4c11  2026-11-30 05:40:12+00:00  yes
"""


def add_commands(sub: Any) -> None:
    keys = with_example(
        sub, "keys", EPILOG, help="the controller's signing keys (agents run only tasks they sign)"
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser("init", help="create the signing key if there is none").set_defaults(
        func=cmd_init
    )
    ksub.add_parser("list", help="the keys, signing key first").set_defaults(func=cmd_list)
    rotate = ksub.add_parser("rotate", help="a new signing key; older keys stay trusted")
    rotate.add_argument(
        "--prepare", action="store_true", help="make the next key, trusted but not signing yet"
    )
    rotate.set_defaults(func=cmd_rotate)
    retire = ksub.add_parser("retire", help="delete a key: agents stop trusting it on next export")
    retire.add_argument("key_id")
    retire.set_defaults(func=cmd_retire)
    export = ksub.add_parser(
        "export", help="the agents' trusted-keys file (/etc/fleettrace/controller-keys.pub)"
    )
    export.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    export.set_defaults(func=cmd_export)


def _store() -> KeyStore:
    return KeyStore(get_settings().keys_dir)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _run(action: Any) -> int:
    try:
        action()
    except KeysError as exc:
        raise CliError(exc.message, code=1) from None
    except OSError as exc:
        raise CliError(f"{exc.filename or 'keys'}: {exc.strerror}", code=1) from None
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    def act() -> None:
        store = _store()
        kid, created = store.init()
        _out(f"{'created' if created else 'exists'}: signing key {kid} in {store.dir}")

    return _run(act)


def cmd_list(args: argparse.Namespace) -> int:
    def act() -> None:
        store = _store()
        pending = store.pending()
        _out(f"{'KEY_ID':<17} {'CREATED':<26} SIGNING")
        for key in store.list():
            state = "yes" if key.signing else ("next" if key.key_id == pending else "no")
            _out(
                f"{key.key_id:<17} {key.created.isoformat(sep=' ', timespec='seconds'):<26} {state}"
            )

    return _run(act)


def cmd_rotate(args: argparse.Namespace) -> int:
    def act() -> None:
        store = _store()
        if args.prepare:
            kid = store.prepare()
            _out(f"prepared key {kid}: install `fleettrace keys export` on every host, then rotate")
            return
        kid, previous = store.rotate()
        _out(f"signing key is now {kid}; {previous} stays trusted until `keys retire {previous}`")

    return _run(act)


def cmd_retire(args: argparse.Namespace) -> int:
    def act() -> None:
        _store().retire(args.key_id)
        _out(f"retired {args.key_id}: export the keys to hosts again to stop trusting it")

    return _run(act)


def cmd_export(args: argparse.Namespace) -> int:
    def act() -> None:
        store = _store()
        if store.signing_id() is None:
            raise KeysError(f"no signing key in {store.dir}: run `fleettrace keys init`")
        text = store.trusted_keys_text()
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)

    return _run(act)
