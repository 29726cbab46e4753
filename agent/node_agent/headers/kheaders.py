"""The kernel's own headers (CONFIG_IKHEADERS), extracted once per release where only root reads.

bcc alone extracts /sys/kernel/kheaders.tar.xz into /tmp/kheaders-<release>, a name any local
user can create first with headers of their own, and loads the module inside every compile.
Here the agent (loads the module and) extracts the archive once into <state dir>/kheaders/
<release>: a root-owned 0700 directory, bounded in size and entries, every member checked,
made in a temporary directory and renamed into place under a lock. It is reused while the
archive's size and mtime (or, after a reload or reboot, its digest) and release still match.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from node_agent.headers import extract as extracting
from node_agent.headers.extract import KheadersError
from node_agent.headers.probe import KHEADERS_ARCHIVE, Headers, kheaders_module, tree_release
from node_agent.protocol import HeadersState
from node_agent.safe_text import printable

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 64 * 1024 * 1024  # a 6.x archive is ~4 MiB of xz
MODPROBE_TIMEOUT_S = 60.0
LOADED_WAIT_S = 5.0
STAMP = ".fleettrace-kheaders.json"
_RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")


class KheadersSource(BaseModel):
    """Where the archive is and where its extracted trees are kept (the agent's settings)."""

    archive: str = str(KHEADERS_ARCHIVE)
    cache: str


class _Stamp(BaseModel):
    release: str
    size: int
    mtime_ns: int
    sha256: str


def headers_tree(source: KheadersSource, release: str) -> Path:
    """The extracted headers of `release`, made now if the cached tree is missing or stale."""
    if not _RELEASE.match(release):
        raise KheadersError(f"kernel release {release!r} is not a safe directory name")
    archive = Path(source.archive)
    cache = _private_dir(Path(source.cache))
    target = cache / release
    with _locked(cache / ".lock"):
        _ensure_archive(archive, release)
        info = _checked_stat(archive)
        kept = _kept(target)
        if kept is not None and (kept.release, kept.size, kept.mtime_ns) == (
            release,
            info.st_size,
            info.st_mtime_ns,
        ):
            return target
        stamp = _Stamp(
            release=release, size=info.st_size, mtime_ns=info.st_mtime_ns, sha256=_sha256(archive)
        )
        if kept is not None and (kept.release, kept.sha256) == (release, stamp.sha256):
            (target / STAMP).write_text(stamp.model_dump_json())  # reloaded, same contents
            return target
        started = time.monotonic()
        fresh = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=cache))
        try:
            entries = extracting.extract(archive, fresh)
            made_for = tree_release(fresh)
            if made_for is not None and made_for != release:
                raise KheadersError(f"{archive} holds headers of {made_for}, not {release}")
            (fresh / STAMP).write_text(stamp.model_dump_json())
            _replace(fresh, target)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
    log.info(
        "extracted %s (%d entries) into %s in %.1fs",
        archive,
        entries,
        target,
        time.monotonic() - started,
    )
    return target


def headers_for_bcc(source: KheadersSource, headers: Headers) -> Headers:
    """Point bcc at the kernel's own headers when those are the ones to use; the state after.

    An archive that cannot be extracted leaves no headers: bcc is then pointed at the missing
    tree, not at its own /tmp/kheaders-<release>."""
    if not headers.uses_kheaders:
        return headers
    try:
        tree = headers_tree(source, headers.release)
    except (KheadersError, OSError) as exc:  # OSError: e.g. a state dir it cannot write
        use_for_compiles(Path(source.cache) / headers.release)
        why = exc.message if isinstance(exc, KheadersError) else str(exc)
        detail = f"{headers.detail}, but the agent could not extract it: {why}"
        return Headers(HeadersState.none, detail, headers.release)
    use_for_compiles(tree)
    detail = f"{headers.detail}; extracted into {tree}"
    return Headers(headers.state, detail, headers.release, tree)


def use_for_compiles(tree: Path) -> None:
    """bcc (and bpftrace, a child of this process) compile against `tree` from now on."""
    os.environ["BCC_KERNEL_SOURCE"] = str(tree)
    os.environ["BPFTRACE_KERNEL_SOURCE"] = str(tree)


def _private_dir(path: Path) -> Path:
    """`path`, made 0700 if missing; refused unless a real directory only this user writes."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise KheadersError(f"{path} is not a directory (a link or a file is refused)")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise KheadersError(
            f"{path} must be owned by uid {os.geteuid()} with mode 0700"
            f" (it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})"
        )
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two traces of one release extract it once
        yield
    finally:
        os.close(fd)


def _ensure_archive(archive: Path, release: str) -> None:
    """Load the kheaders module when the archive is missing and the module is there."""
    if archive.exists() or archive != KHEADERS_ARCHIVE:
        return
    module = kheaders_module(release)
    if module is None:
        raise KheadersError(f"no {archive} and no kheaders module for {release}")
    modprobe = shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if modprobe is None:
        raise KheadersError(f"cannot load {module}: no modprobe")
    try:
        done = subprocess.run(
            [modprobe, "kheaders"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=MODPROBE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KheadersError(f"modprobe kheaders failed: {exc}") from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        last = printable((said or ["no output"])[-1][:200])
        raise KheadersError(f"modprobe kheaders failed ({done.returncode}): {last}")
    log.info("loaded %s for its %s", module, archive)
    deadline = time.monotonic() + LOADED_WAIT_S
    while not archive.exists():
        if time.monotonic() > deadline:
            raise KheadersError(f"modprobe kheaders succeeded but {archive} did not appear")
        time.sleep(0.05)


def _checked_stat(archive: Path) -> os.stat_result:
    """The archive's stat; refused unless a regular file only root (or this user) writes."""
    try:
        info = archive.stat()
    except OSError as exc:
        raise KheadersError(f"cannot read {archive}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise KheadersError(f"{archive} is not a regular file")
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
        raise KheadersError(f"{archive} is writable by others than root: refused")
    if info.st_size > MAX_ARCHIVE_BYTES:
        raise KheadersError(f"{archive} is {info.st_size} bytes, past {MAX_ARCHIVE_BYTES}")
    return info


def _sha256(archive: Path) -> str:
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _kept(target: Path) -> _Stamp | None:
    try:
        return _Stamp.model_validate_json((target / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _replace(fresh: Path, target: Path) -> None:
    """Rename the new tree into place; an old one goes aside first, then away."""
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".old.{target.name}.", dir=target.parent))
        os.rename(target, old / "tree")
        os.rename(fresh, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(fresh, target)
    os.chmod(target, 0o700)
