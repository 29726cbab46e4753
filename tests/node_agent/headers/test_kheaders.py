"""The agent's own kheaders extraction: what it refuses (hostile archives built here), that it
extracts once, reuses, replaces atomically and leaves nothing behind when it refuses."""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent.headers import extract as extracting
from node_agent.headers.extract import KheadersError, extract
from node_agent.headers.kheaders import KheadersSource, headers_for_bcc, headers_tree
from node_agent.headers.probe import Headers
from node_agent.protocol import HeadersState

REL = "6.1.0-57-amd64"
Member = tuple[str, str, bytes | str]  # (kind, name, data or link target)
GOOD: list[Member] = [
    ("dir", ".", b""),
    ("dir", "./include", b""),
    ("file", "./include/generated/utsrelease.h", f'#define UTS_RELEASE "{REL}"\n'.encode()),
    ("file", "./include/linux/types.h", b"typedef int ft_t;\n"),
    ("file", "./arch/x86/include/asm/ptrace.h", b"struct pt_regs;\n"),
]


def _archive(path: Path, members: list[Member]) -> Path:
    """A tar.xz as gen_kheaders.sh makes one, with whatever members a test wants."""
    with tarfile.open(path, "w:xz") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                assert isinstance(data, str)
                info.type = {
                    "symlink": tarfile.SYMTYPE,
                    "hardlink": tarfile.LNKTYPE,
                    "chr": tarfile.CHRTYPE,
                    "fifo": tarfile.FIFOTYPE,
                }[kind]
                info.linkname = data
                tar.addfile(info)
    path.chmod(0o444)
    return path


HOSTILE: dict[str, tuple[list[Member], str]] = {
    "absolute path": ([("file", "/etc/cron.d/evil", b"x")], "absolute path '/etc/cron.d/evil'"),
    "dot-dot": ([("file", "include/../../evil", b"x")], "climbs out of the tree"),
    "dot-dot first": ([("file", "../evil", b"x")], "climbs out of the tree"),
    "absolute symlink": ([("symlink", "include/passwd", "/etc/passwd")], "leaves the tree"),
    "climbing symlink": ([("symlink", "include/up", "../../..")], "leaves the tree"),
    "hard link outside": ([("hardlink", "include/shadow", "/etc/shadow")], "absolute path"),
    "hard link to nothing": ([("hardlink", "include/a.h", "include/b.h")], "names nothing"),
    "device": ([("chr", "include/mem", "")], "neither a file, a directory nor a link"),
    "fifo": ([("fifo", "include/pipe", "")], "neither a file, a directory nor a link"),
    "duplicate": (
        [("file", "include/a.h", b"1"), ("file", "./include/a.h", b"2")],
        "appears twice",
    ),
    "write through a link": (
        [("symlink", "include/x.h", "y.h"), ("file", "include/x.h", b"2")],
        "appears twice",
    ),
    "another kernel's headers": (
        [("file", "include/generated/utsrelease.h", b'#define UTS_RELEASE "6.18.0-evil"\n')],
        "holds headers of 6.18.0-evil, not 6.1.0-57-amd64",
    ),
}


@pytest.fixture(autouse=True)
def _compile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What headers_for_bcc sets is put back after each test: other tests compile for real."""
    for name in ("BCC_KERNEL_SOURCE", "BPFTRACE_KERNEL_SOURCE"):
        # setenv first, so that monkeypatch records the value (or its absence) to put back:
        # a bare delenv of an unset variable records nothing, and the tests' value leaked.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _source(tmp_path: Path, archive: Path) -> KheadersSource:
    return KheadersSource(archive=str(archive), cache=str(tmp_path / "state" / "kheaders"))


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "state" / "kheaders").iterdir())


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_archive_is_refused_and_nothing_is_kept(tmp_path: Path, case: str) -> None:
    members, message = HOSTILE[case]
    archive = _archive(tmp_path / "k.tar.xz", [*GOOD[:2], *members])
    with pytest.raises(KheadersError, match=re.escape(message)):
        headers_tree(_source(tmp_path, archive), REL)
    assert _left(tmp_path) == [".lock"]
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [("MAX_ENTRIES", 3, "more than 3 entries"), ("MAX_BYTES", 20, "more than 20 bytes")],
)
def test_size_and_entry_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, value: int, message: str
) -> None:
    monkeypatch.setattr(extracting, limit, value)
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    with pytest.raises(KheadersError, match=message):
        headers_tree(_source(tmp_path, archive), REL)
    assert _left(tmp_path) == [".lock"]


def test_not_an_archive_and_a_writable_archive_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.xz"
    junk.write_bytes(b"\xfd7zXZ\x00 truncated")
    junk.chmod(0o444)
    with pytest.raises(KheadersError, match=r"not a readable tar\.xz"):
        headers_tree(_source(tmp_path, junk), REL)
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    archive.chmod(0o666)
    with pytest.raises(KheadersError, match="writable by others than root"):
        headers_tree(_source(tmp_path, archive), REL)


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda d: d.symlink_to("/tmp"), "not a directory"),
        (lambda d: (d.mkdir(), d.chmod(0o777)), "with mode 0700"),
    ],
    ids=["a link", "world-writable"],
)
def test_the_cache_must_be_this_users_private_directory(
    tmp_path: Path, prepare: Callable[[Path], object], message: str
) -> None:
    cache = tmp_path / "state" / "kheaders"
    cache.parent.mkdir()
    prepare(cache)
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    with pytest.raises(KheadersError, match=message):
        headers_tree(_source(tmp_path, archive), REL)


def test_a_bad_release_name_is_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    with pytest.raises(KheadersError, match="not a safe directory name"):
        headers_tree(_source(tmp_path, archive), "../../etc")


def test_extracted_once_private_reused_and_replaced_when_the_archive_changes(
    tmp_path: Path,
) -> None:
    archive = _archive(tmp_path / "k.tar.xz", [*GOOD, ("symlink", "include/asm", "linux")])
    source = _source(tmp_path, archive)
    tree = headers_tree(source, REL)
    assert tree == tmp_path / "state" / "kheaders" / REL
    assert (tree / "include/linux/types.h").read_bytes() == b"typedef int ft_t;\n"
    assert os.readlink(tree / "include/asm") == "linux"
    for private in (tree, tree.parent):
        assert private.stat().st_mode & 0o777 == 0o700 and private.stat().st_uid == os.geteuid()
    inode = tree.stat().st_ino
    assert headers_tree(source, REL).stat().st_ino == inode  # size and mtime match
    os.utime(archive, (1, 1))  # a reload or reboot: same bytes, another mtime
    assert headers_tree(source, REL).stat().st_ino == inode
    archive.chmod(0o644)
    _archive(archive, [*GOOD, ("file", "include/linux/new.h", b"int n;\n")])
    fresh = headers_tree(source, REL)
    assert (fresh / "include/linux/new.h").exists() and fresh.stat().st_ino != inode
    assert _left(tmp_path) == [".lock", REL]


def test_concurrent_traces_extract_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    source = _source(tmp_path, archive)
    calls: list[Path] = []
    real = extracting.extract

    def counted(path: Path, into: Path) -> int:
        calls.append(into)
        return real(path, into)

    monkeypatch.setattr(extracting, "extract", counted)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(headers_tree(source, REL))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [tmp_path / "state" / "kheaders" / REL] * 6
    assert _left(tmp_path) == [".lock", REL]


def test_headers_for_bcc_points_bcc_there_or_at_nothing(tmp_path: Path) -> None:
    offered = Headers(HeadersState.kheaders, "the kernel offers k.tar.xz", REL)
    good = _archive(tmp_path / "k.tar.xz", GOOD)
    used = headers_for_bcc(_source(tmp_path, good), offered)
    assert used.state is HeadersState.kheaders and used.tree is not None
    assert f"extracted into {used.tree}" in used.detail
    assert os.environ["BCC_KERNEL_SOURCE"] == os.environ["BPFTRACE_KERNEL_SOURCE"] == str(used.tree)

    other = tmp_path / "other"
    other.mkdir()
    bad = _archive(other / "k.tar.xz", [("file", "/etc/evil", b"x")])
    refused = headers_for_bcc(_source(other, bad), offered)
    assert refused.state is HeadersState.none and "could not extract it" in refused.detail
    # Not bcc's own /tmp/kheaders-<release>: the (missing) tree the agent would have made.
    assert os.environ["BCC_KERNEL_SOURCE"] == str(other / "state" / "kheaders" / REL)
    assert not Path(os.environ["BCC_KERNEL_SOURCE"]).exists()


def test_a_state_dir_it_cannot_write_leaves_no_headers_with_the_reason(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    (tmp_path / "state").write_text("a file where the state dir should be")
    offered = Headers(HeadersState.kheaders, "the kernel offers k.tar.xz", REL)
    refused = headers_for_bcc(_source(tmp_path, archive), offered)
    assert refused.state is HeadersState.none and "Not a directory" in refused.detail


def test_extract_counts_entries(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "k.tar.xz", GOOD)
    into = tmp_path / "into"
    into.mkdir()
    assert extract(archive, into) == 4  # "." itself is not an entry
