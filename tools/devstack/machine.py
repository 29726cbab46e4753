"""What stacks share on this machine (a user, directories): made by the first, removed by the last.

Several stacks may be up at once (a developer's and a test run's). Each joins under a lock;
the record in /run says what was made and which stacks use it. The last one to leave removes
what was made, whichever stack made it. Everything is recorded before it is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devstack import system
from devstack.config import DevstackError

RECORD = Path("/run/fleettrace-dev-shared.json")


class Shared:
    """Make shared things through this, inside `join`: each is recorded before it is made."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def _made(self, kind: str, value: str) -> None:
        made: list[list[str]] = self.record.setdefault("made", [])
        if [kind, value] not in made:
            made.append([kind, value])
            _save(self.record)

    def directory(self, path: Path, mode: int = 0o755) -> None:
        if not path.exists():
            self._made("dir", str(path))
            path.mkdir(mode=mode, parents=True)

    def user(self, name: str, home: Path) -> None:
        """A system user that can log in with a key (password '*': not locked, none set)."""
        if user_exists(name):
            return
        self._made("user", name)
        system.run(
            *("useradd", "--system", "--user-group", "--home-dir", str(home)),
            *("--no-create-home", "--shell", "/bin/sh", "--password", "*", name),
        )


@contextlib.contextmanager
def _locked() -> Iterator[dict[str, Any]]:
    # The lock is on /run itself: a lock file would be one more thing left behind.
    fd = os.open(RECORD.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            record: dict[str, Any] = json.loads(RECORD.read_text())
        except FileNotFoundError:
            record = {"stacks": [], "made": []}
        except ValueError as exc:
            raise DevstackError(f"cannot read {RECORD}: {exc}") from None
        yield record
    finally:
        os.close(fd)


def _save(record: dict[str, Any]) -> None:
    tmp = RECORD.with_name(f".{RECORD.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(RECORD)


@contextlib.contextmanager
def join(state_dir: Path) -> Iterator[Shared]:
    """Count the stack in `state_dir` as a user of the shared things, and make them."""
    with _locked() as record:
        if str(state_dir) not in record["stacks"]:
            record["stacks"].append(str(state_dir))
        _save(record)
        yield Shared(record)


def leave(state_dir: Path, alive: str) -> None:
    """The stack in `state_dir` is gone; the last one removes what was made (users first).

    `alive` names a file of every joined stack's state dir: a stack whose file is gone (its
    state dir removed without `down`) no longer counts.
    """
    with _locked() as record:
        stacks = [s for s in record["stacks"] if s != str(state_dir)]
        record["stacks"] = [s for s in stacks if (Path(s) / alive).exists()]
        if record["stacks"]:
            _save(record)
            return
        made = record["made"]
        for kind, value in made:
            if kind == "user" and user_exists(value):
                system.run("userdel", value)
        for kind, value in reversed(made):
            if kind == "dir":
                with contextlib.suppress(FileNotFoundError):
                    Path(value).rmdir()
        RECORD.unlink(missing_ok=True)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
