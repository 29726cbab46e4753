"""The headers probe tells each case apart and names the fix (a fake /lib/modules per case)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.capabilities import program_support
from node_agent.errors import ProgramCompileError, UnsupportedProgram
from node_agent.headers.probe import Headers, compile_note, probe_headers, unsupported_reason
from node_agent.programs import get_program
from node_agent.protocol import Feature, HeadersState
from node_agent.runtime.bcc_runtime import BccRuntime

REL = "6.1.0-57-amd64"
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
UBUNTU = "ID=ubuntu\nID_LIKE=debian\n"
ROCKY = 'ID="rocky"\nID_LIKE="rhel centos fedora"\n'
ALPINE = "ID=alpine\n"


def _tree(root: Path, release: str) -> Path:
    tree = root / "src" / f"linux-headers-{release}"
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    return tree


def _layout(tmp_path: Path, case: str) -> tuple[Path, Path]:
    modules = tmp_path / "modules"
    rel = modules / REL
    rel.mkdir(parents=True)
    archive = tmp_path / "kheaders.tar.xz"
    if case in ("exact", "approximate", "approximate+archive"):
        other = REL if case == "exact" else "6.1.0-50-amd64"
        (rel / "build").symlink_to(_tree(tmp_path, other))
    if case == "dangling":
        (rel / "build").symlink_to(tmp_path / "gone")
    if case in ("archive", "approximate+archive"):
        archive.write_bytes(b"xz")
    if case == "modules.dep":
        (rel / "modules.dep").write_text(
            "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz\nkernel/kernel/kheaders.ko.xz:\n"
        )
    if case == "module file":
        (rel / "extra").mkdir()
        (rel / "extra/kheaders.ko").write_bytes(b"\x7fELF")
    return modules, archive


CASES = {
    "exact": (HeadersState.exact, ["linux-headers-6.1.0-57-amd64", f"is {REL}'s"]),
    "approximate": (
        HeadersState.approximate,
        ["is for 6.1.0-50-amd64, not 6.1.0-57-amd64", f"apt-get install linux-headers-{REL}"],
    ),
    "none": (HeadersState.none, [f"no {{modules}}/{REL}/build", "offers no kheaders"]),
    "dangling": (HeadersState.none, ["links to {tmp}/gone, which does not exist"]),
    "archive": (HeadersState.kheaders, ["the kernel offers {tmp}/kheaders.tar.xz"]),
    "modules.dep": (
        HeadersState.kheaders,
        ["kheaders module {modules}/6.1.0-57-amd64/kernel/kernel/kheaders.ko.xz offers"],
    ),
    "module file": (HeadersState.kheaders, ["{modules}/6.1.0-57-amd64/extra/kheaders.ko"]),
    "approximate+archive": (HeadersState.kheaders, ["6.1.0-50-amd64, not used"]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_case_is_told_apart_and_named(tmp_path: Path, case: str) -> None:
    modules, archive = _layout(tmp_path, case)
    os_release = tmp_path / "os-release"
    os_release.write_text(DEBIAN)
    found = probe_headers(REL, archive=archive, modules=modules, os_release=os_release)
    state, phrases = CASES[case]
    assert found.state is state, found.detail
    for phrase in phrases:
        assert phrase.format(tmp=tmp_path, modules=modules) in found.detail


@pytest.mark.parametrize(
    ("os_release", "fix"),
    [
        (DEBIAN, f"apt-get install linux-headers-{REL}"),
        (UBUNTU, f"apt-get install linux-headers-{REL}"),
        (ROCKY, f"dnf install kernel-devel-{REL}"),
        ("ID=fedora\n", f"dnf install kernel-devel-{REL}"),
        (ALPINE, "install your distribution's kernel headers for 6.1.0-57-amd64"),
        (None, "install your distribution's kernel headers"),
    ],
)
def test_none_says_how_to_get_them_on_this_distribution(
    tmp_path: Path, os_release: str | None, fix: str
) -> None:
    modules, archive = _layout(tmp_path, "none")
    path = tmp_path / "os-release"
    if os_release is not None:
        path.write_text(os_release)
    found = probe_headers(REL, archive=archive, modules=modules, os_release=path)
    assert found.state is HeadersState.none
    assert fix in found.detail
    reason = unsupported_reason(found)
    assert reason is not None and fix in reason and f"{modules}/{REL}/build" in reason


def test_without_headers_every_bcc_program_is_unsupported_with_the_reason() -> None:
    reason = "no kernel headers to compile with: no /lib/modules/x/build"
    every = dict.fromkeys(Feature, True)
    for name in ("syscalls", "bpftrace"):
        spec = get_program(name)
        support = program_support(spec, every, no_headers=reason)
        assert support.supported is (spec.engine != "bcc")
        assert support.reason == (reason if spec.engine == "bcc" else None)
    # The headers come first: without them the probe's own programs do not compile, and the
    # features they test read as missing ("needs tracepoints ... Failed to compile").
    lacking = dict.fromkeys(Feature, False)
    errors = dict.fromkeys(Feature, "Failed to compile BPF module")
    support = program_support(get_program("syscalls"), lacking, errors, no_headers=reason)
    assert support.reason == reason
    # A program this agent's settings refuse keeps that reason.
    refused = program_support(get_program("custom"), every, allow_custom=False, no_headers=reason)
    assert refused.reason is not None and "allow_custom is off" in refused.reason


def test_a_trace_without_headers_is_refused_before_bcc_compiles() -> None:
    headers = Headers(HeadersState.none, "no /lib/modules/x/build; apt-get install y", "x")
    with pytest.raises(UnsupportedProgram, match="no kernel headers to compile with: no /lib"):
        BccRuntime(headers).load("not even C", [])


def test_only_approximate_and_missing_headers_explain_a_failed_compile() -> None:
    for state in HeadersState:
        note = compile_note(Headers(state, "detail", "x"))
        assert (note is not None) is (state in (HeadersState.approximate, HeadersState.none))


@pytest.mark.bcc
def test_a_failed_compile_on_approximate_headers_says_so_and_names_the_package() -> None:
    headers = probe_headers()  # this machine's real headers
    if headers.state is not HeadersState.approximate:
        pytest.skip(f"this host's headers are {headers.state.value}, not approximate")
    with pytest.raises(ProgramCompileError) as caught:
        BccRuntime(headers).load("int broken( { return 0; }", [])
    message = caught.value.message
    assert message.startswith("the C source did not compile (the kernel headers are approximate")
    assert f"linux-headers-{headers.release}" in message or "kernel-devel" in message
