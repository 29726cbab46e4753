"""A tar.xz extracted with every member checked: nothing lands outside the directory given.

The kernel's header archive comes from /sys, but its path is a setting and the tree it makes
is what every trace compiles against: absolute names, `..`, links that leave the tree,
devices and archives past their bounds are refused rather than trusted.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, cast

from node_agent.errors import FleettraceError

MAX_BYTES = 512 * 1024 * 1024  # a 6.x archive holds ~40 MiB of headers
MAX_ENTRIES = 100_000  # ... in ~7,000 entries


class KheadersError(FleettraceError):
    """The kernel's header archive could not be made into a tree bcc may use."""


class _Bounded:
    """A read-only stream that fails past `limit` bytes: pax headers count too."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw = raw
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size >= 0 else self._left + 1)
        self._left -= len(data)
        if self._left < 0:
            raise KheadersError(f"the archive holds more than {MAX_BYTES} bytes: refused")
        return data


def extract(archive: Path, into: Path) -> int:
    """Extract `archive` (tar.xz) into the empty directory `into`; the entries written.

    Refused, with nothing kept: absolute names, `..`, links that are absolute or climb,
    hard links to anything not extracted before, devices and fifos, duplicates, and more
    than MAX_ENTRIES entries or MAX_BYTES bytes."""
    written: set[str] = set()
    total = 0
    try:
        with (
            lzma.open(archive, "rb") as raw,
            tarfile.open(
                fileobj=cast(IO[bytes], _Bounded(raw, MAX_BYTES + 1024 * 1024)),
                mode="r|",
            ) as tar,
        ):
            for member in tar:
                if len(written) >= MAX_ENTRIES:
                    raise KheadersError(f"the archive holds more than {MAX_ENTRIES} entries")
                name = _member_name(member.name)
                if name is None:
                    continue  # "." itself
                if name in written:
                    raise KheadersError(f"{member.name!r} appears twice in the archive")
                total += max(member.size, 0)
                if total > MAX_BYTES:
                    raise KheadersError(f"the archive holds more than {MAX_BYTES} bytes")
                _write(tar, member, name, into, written)
                written.add(name)
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise KheadersError(f"{archive} is not a readable tar.xz: {exc}") from exc
    except OSError as exc:
        raise KheadersError(f"cannot extract {archive}: {exc}") from exc
    return len(written)


def _member_name(raw: str) -> str | None:
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise KheadersError(f"absolute path {raw!r} in the archive")
    parts = [p for p in path.parts if p != "."]
    if ".." in parts:
        raise KheadersError(f"{raw!r} climbs out of the tree ('..')")
    if any("\x00" in p for p in parts):
        raise KheadersError(f"{raw!r} holds a NUL")
    return "/".join(parts) or None


def _write(
    tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, into: Path, written: set[str]
) -> None:
    path = into / name
    if member.isdir():
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if member.issym():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or ".." in link.parts:
            raise KheadersError(f"link {member.name!r} -> {member.linkname!r} leaves the tree")
        os.symlink(member.linkname, path)
        return
    if member.islnk():
        source = _member_name(member.linkname)
        if source is None or source not in written:
            raise KheadersError(
                f"hard link {member.name!r} -> {member.linkname!r} names nothing extracted"
            )
        os.link(into / source, path, follow_symlinks=False)
        return
    if not member.isreg():
        raise KheadersError(f"{member.name!r} is neither a file, a directory nor a link")
    data = tar.extractfile(member)
    assert data is not None  # a regular file always has contents
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(data, out, 1 << 20)
