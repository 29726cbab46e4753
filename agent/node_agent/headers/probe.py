"""Which kernel headers bcc would compile with here: exact, approximate, none or kheaders.

Each answer names the tree (or archive) and, when the headers are not exact, how to get them.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from node_agent import btf as kernel_btf
from node_agent.errors import UnsupportedProgram
from node_agent.protocol import HeadersState
from node_agent.safe_text import printable

MODULES = Path("/lib/modules")
KHEADERS_ARCHIVE = Path("/sys/kernel/kheaders.tar.xz")
OS_RELEASE = Path("/etc/os-release")
_DEBIAN_LIKE = {"debian", "ubuntu"}
_RHEL_LIKE = {"fedora", "rhel", "centos", "rocky", "almalinux", "ol", "amzn"}
log = logging.getLogger(__name__)
_MODULE = re.compile(r"^(?:\S*/)?kheaders\.ko(?:\.(?:xz|zst|gz))?:", re.MULTILINE)


@dataclass(frozen=True)
class Headers:
    """What the probe found: the state, one readable sentence, and whether kheaders serves."""

    state: HeadersState
    detail: str
    release: str
    tree: Path | None = None  # the extracted kheaders, once the agent made them

    @property
    def trees(self) -> list[str]:
        return [str(self.tree)] if self.tree is not None else []

    @property
    def uses_kheaders(self) -> bool:
        return self.state is HeadersState.kheaders


def probe_headers(
    release: str | None = None,
    *,
    archive: Path = KHEADERS_ARCHIVE,
    modules: Path = MODULES,
    os_release: Path = OS_RELEASE,
) -> Headers:
    """Exact build tree first; then the kernel's own kheaders; then another kernel's tree."""
    release = release or platform.release()
    build = modules / release / "build"
    approximate: str | None = None
    if build.is_dir():
        target = build.resolve()
        version = tree_release(target)
        if version == release:
            detail = f"{target} (linked as {build}) is {release}'s"
            return Headers(HeadersState.exact, detail, release)
        approximate = f"{target} (linked as {build}) is for {version or 'another kernel'}"
        missing = f"{build} is not {release}'s"
    elif build.is_symlink():
        missing = f"{build} links to {os.readlink(build)}, which does not exist"
    else:
        missing = f"no {build}"
    offer = kheaders_offer(release, archive=archive, modules=modules)
    if offer is not None:
        instead = f" ({approximate}, not used)" if approximate else ""
        return Headers(HeadersState.kheaders, f"{offer}{instead}", release)
    fix = install_hint(release, build, os_release=os_release)
    if approximate is not None:
        detail = f"{approximate}, not {release}; exact ones: {fix}"
        return Headers(HeadersState.approximate, detail, release)
    detail = f"{missing} and the kernel offers no kheaders; {fix}"
    return Headers(HeadersState.none, detail, release)


def kheaders_offer(release: str, *, archive: Path, modules: Path) -> str | None:
    """Where the kernel's own header archive comes from, if it has one."""
    if archive.is_file():
        return f"the kernel offers {archive}"
    module = kheaders_module(release, modules)
    if module is not None:
        return f"the kheaders module {module} offers {archive} once loaded"
    return None


def kheaders_module(release: str, modules: Path = MODULES) -> Path | None:
    """The kheaders module of this release: modules.dep first, else a kheaders.ko* file."""
    tree = modules / release
    try:
        listed = _MODULE.search((tree / "modules.dep").read_text(errors="replace"))
    except OSError:
        listed = None
    if listed is not None:
        return tree / listed.group(0).rstrip(":")
    for pattern in ("kernel/kernel/kheaders.ko*", "*/**/kheaders.ko*"):
        found = sorted(tree.glob(pattern))
        if found:
            return found[0]
    return None


def install_hint(release: str, build: Path, *, os_release: Path = OS_RELEASE) -> str:
    """The command (or sentence) that gets this kernel's headers on this distribution."""
    ids = distro_ids(os_release)
    if ids & _DEBIAN_LIKE:
        return f"apt-get install linux-headers-{release}"
    if ids & _RHEL_LIKE:
        return f"dnf install kernel-devel-{release}"
    return (
        f"install your distribution's kernel headers for {release} (its linux-headers or"
        f" kernel-devel package) so that {build} exists, or use a kernel built with"
        " CONFIG_IKHEADERS"
    )


def distro_ids(os_release: Path = OS_RELEASE) -> set[str]:
    """ID and ID_LIKE of /etc/os-release, lower case."""
    try:
        text = os_release.read_text(errors="replace")
    except OSError:
        return set()
    ids: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip("\"'").lower().split())
    return ids


def tree_release(tree: Path) -> str | None:
    """The kernel release a header tree was made for (utsrelease.h or kernel.release)."""
    for name in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        path = tree / name
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r'"([^"]+)"', text) or re.search(r"(\S+)", text)
        if match:
            return printable(match.group(1)[:200])
    return None


def unsupported_reason(headers: Headers) -> str | None:
    """Why no bcc program can compile here, if none can (program_support adds it)."""
    if headers.state is HeadersState.none:
        return f"no kernel headers to compile with: {headers.detail}"
    return None


def layout_problem(
    headers: Headers, fields: Mapping[str, str], btf: Path | None = None
) -> str | None:
    """Why a program reading these struct members (C define -> "struct.member") cannot run
    with these headers: approximate ones may lay the structs out as another kernel did, so the
    offsets must come from this kernel's BTF; None when they can (or the headers are this
    kernel's own)."""
    if headers.state is not HeadersState.approximate or not fields:
        return None
    try:
        kernel_btf.offsets(fields, btf or kernel_btf.BTF_VMLINUX)
    except kernel_btf.BtfError as exc:
        return (
            f"reads {', '.join(fields.values())} in kernel structs, which approximate headers"
            f" may place wrongly, and {exc}; exact headers: {headers.detail}"
        )
    return None


def layout_defines(
    headers: Headers, fields: Mapping[str, str], btf: Path | None = None
) -> list[str]:
    """The cflags placing those members where this kernel has them, from its BTF, when the
    headers are approximate (else none: the headers' own offsets are right); a member BTF
    cannot place makes the program unsupported, naming it."""
    if headers.state is not HeadersState.approximate or not fields:
        return []
    problem = layout_problem(headers, fields, btf)
    if problem is not None:
        raise UnsupportedProgram(f"the program {problem}")
    btf = btf or kernel_btf.BTF_VMLINUX
    placed = kernel_btf.offsets(fields, btf)
    log.info("approximate headers: struct members placed from %s: %s", btf, placed)
    return [f"-D{define}={offset}" for define, offset in placed.items()]


def compile_note(headers: Headers) -> str | None:
    """What a failed compile's error adds about the headers, when they may be the cause."""
    if headers.state is HeadersState.approximate:
        return f"the kernel headers are approximate: {headers.detail}"
    if headers.state is HeadersState.none:
        return f"there are no kernel headers: {headers.detail}"
    return None
