"""scripts/setup.sh's kernel-header step on a fresh machine, for real, without touching ours.

Each case runs the step in a private mount namespace with an empty tmpfs over /lib/modules
(and, where a case says so, over /usr/src), so it meets what a fresh machine has: no build
link, or a dangling one, or no headers at all. apt is never called (FLEETTRACE_SETUP_OFFLINE).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import run_in_own_mounts

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
# A release no distro ships: forces the generic fallback whatever this machine runs.
UNKNOWN_KERNEL = "6.18.99-fleettrace-test"


def _generic_trees() -> list[Path]:
    pattern = re.compile(r"^linux-headers-[0-9][0-9.]*-[0-9]+-(amd64|arm64|generic)$")
    return sorted(
        (p for p in Path("/usr/src").glob("linux-headers-*") if pattern.match(p.name)),
        key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p.name)],
    )


@pytest.fixture(scope="module")
def generic() -> Path:
    """The newest distro headers installed here (scripts/setup.sh installed them)."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare is missing (util-linux)")
    trees = _generic_trees()
    if not trees:
        pytest.fail("no distro kernel headers under /usr/src: run scripts/setup.sh first")
    return trees[-1]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    build: str | None
    source: str | None
    build_stat: str | None


def run_setup(
    tmp_path: Path,
    kernel: str,
    *,
    before: str = "",
    hide_usr_src: bool = False,
    env: dict[str, str] | None = None,
    runs: int = 1,
) -> list[Run]:
    """Run the header step `runs` times in one fresh namespace; what each run left behind."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    modules = f"/lib/modules/{kernel}"
    lines = [
        "set -u",
        "mount -t tmpfs tmpfs /lib/modules",
        "mount -t tmpfs tmpfs /usr/src" if hide_usr_src else ":",
        before,
    ]
    for i in range(runs):
        lines += [
            f"bash {shlex.quote(str(SETUP))} --only headers"
            f" >{out}/{i}.out 2>{out}/{i}.err; echo $? >{out}/{i}.rc",
            f"readlink {modules}/build >{out}/{i}.build || true",
            f"readlink {modules}/source >{out}/{i}.source || true",
            f"stat -c '%i %Y' {modules}/build >{out}/{i}.stat 2>/dev/null || true",
        ]
    script = tmp_path / "case.sh"
    script.write_text("\n".join(lines) + "\n")
    full_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "FLEETTRACE_SETUP_OFFLINE": "1",
        "FLEETTRACE_SETUP_QUIET": "0",
        "FLEETTRACE_SETUP_KERNEL": kernel,
        **(env or {}),
    }
    run_in_own_mounts(script, full_env, timeout_s=120)

    def read(name: str) -> str | None:
        text = (out / name).read_text().strip()
        return text or None

    return [
        Run(
            rc=int((out / f"{i}.rc").read_text()),
            stdout=(out / f"{i}.out").read_text(),
            stderr=(out / f"{i}.err").read_text(),
            build=read(f"{i}.build"),
            source=read(f"{i}.source"),
            build_stat=read(f"{i}.stat"),
        )
        for i in range(runs)
    ]


def common_of(tree: Path) -> str:
    """What Debian (X-N-common) or Ubuntu (X-N) ships beside a flavoured tree."""
    prefix = str(tree)
    while "-" in Path(prefix).name.removeprefix("linux-headers-"):
        prefix = prefix.rsplit("-", 1)[0]
        for candidate in (f"{prefix}-common", prefix):
            if Path(candidate).is_dir():
                return candidate
    return str(tree)


def test_exact_headers_are_linked_quietly(tmp_path: Path, generic: Path) -> None:
    kernel = generic.name.removeprefix("linux-headers-")
    (run,) = run_setup(tmp_path, kernel)
    assert run.rc == 0, run.stderr
    assert run.build == str(generic)
    assert run.source == common_of(generic)
    assert run.stderr == "", "exact headers need no warning"


def test_only_generic_headers_are_linked_with_a_warning(tmp_path: Path, generic: Path) -> None:
    (run,) = run_setup(tmp_path, UNKNOWN_KERNEL)
    assert run.rc == 0, run.stderr
    assert run.build == str(generic)
    assert run.source == common_of(generic)
    assert f"no headers for kernel {UNKNOWN_KERNEL} in the distro" in run.stderr
    assert "FLEETTRACE_KERNEL_HEADERS" in run.stderr


def test_the_running_kernel_gets_a_build_tree(tmp_path: Path, generic: Path) -> None:
    """The real `uname -r` on this fresh-looking machine: exact or generic, never nothing."""
    kernel = os.uname().release
    (run,) = run_setup(tmp_path, kernel, env={"FLEETTRACE_SETUP_KERNEL": ""})
    assert run.rc == 0, run.stderr
    assert run.build is not None and (Path(run.build) / "Makefile").exists()


def test_no_headers_at_all_is_one_clear_line_and_a_failure(tmp_path: Path, generic: Path) -> None:
    (run,) = run_setup(tmp_path, UNKNOWN_KERNEL, hide_usr_src=True)
    assert run.rc == 1
    assert run.build is None, "nothing is linked"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"setup: kernel headers for {UNKNOWN_KERNEL}: cannot find")
    assert "set FLEETTRACE_KERNEL_HEADERS=DIR" in lines[0]


def test_a_second_run_is_quiet_and_changes_nothing(tmp_path: Path, generic: Path) -> None:
    first, second = run_setup(tmp_path, UNKNOWN_KERNEL, runs=2)
    assert first.rc == 0 and first.stderr
    assert second.rc == 0
    assert (second.stdout, second.stderr) == ("", "")
    assert second.build_stat == first.build_stat, "the link was not remade"


def test_a_dangling_build_link_is_repaired(tmp_path: Path, generic: Path) -> None:
    modules = f"/lib/modules/{UNKNOWN_KERNEL}"
    before = f"mkdir -p {modules} && ln -s /nonexistent/headers {modules}/build"
    (run,) = run_setup(tmp_path, UNKNOWN_KERNEL, before=before)
    assert run.rc == 0, run.stderr
    assert "points to /nonexistent/headers, which holds no headers: relinking" in run.stderr
    assert run.build == str(generic)


def test_the_override_wins_over_what_is_linked(tmp_path: Path, generic: Path) -> None:
    modules = f"/lib/modules/{UNKNOWN_KERNEL}"
    before = f"mkdir -p {modules} && ln -s /usr/src/python3.11 {modules}/build"
    env = {"FLEETTRACE_KERNEL_HEADERS": str(generic)}
    first, second = run_setup(tmp_path, UNKNOWN_KERNEL, before=before, env=env, runs=2)
    assert first.rc == 0, first.stderr
    assert first.build == str(generic)
    assert (second.stdout, second.stderr, second.build_stat) == ("", "", first.build_stat)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("/nonexistent/tree", "FLEETTRACE_KERNEL_HEADERS=/nonexistent/tree is not a directory"),
        ("/usr/share", "FLEETTRACE_KERNEL_HEADERS=/usr/share holds no kernel headers"),
    ],
    ids=["missing", "not-headers"],
)
def test_a_bad_override_is_one_clear_line(
    tmp_path: Path, generic: Path, override: str, says: str
) -> None:
    (run,) = run_setup(tmp_path, UNKNOWN_KERNEL, env={"FLEETTRACE_KERNEL_HEADERS": override})
    assert run.rc == 1
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"setup: kernel headers for {UNKNOWN_KERNEL}: {says}")


def test_a_read_only_lib_modules_names_the_step(tmp_path: Path, generic: Path) -> None:
    (run,) = run_setup(tmp_path, UNKNOWN_KERNEL, before="mount -o remount,ro /lib/modules")
    assert run.rc == 1
    (line,) = run.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"setup: kernel headers for {UNKNOWN_KERNEL}: ")
    assert "FLEETTRACE_KERNEL_HEADERS" in line


def test_a_non_root_user_is_told_how_to_run_it() -> None:
    # A copy that user can read: the checkout may sit in a directory only root can enter (a
    # clone into `mktemp -d`), and the user check comes before anything else the script does.
    readable = Path(tempfile.mkdtemp(prefix="ft-setup-"))
    try:
        readable.chmod(0o755)
        script = readable / "setup.sh"
        shutil.copyfile(SETUP, script)
        script.chmod(0o644)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(readable)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("setup: checking the user: must run as root")
    assert "sudo bash" in line


def test_a_machine_without_bpftrace_is_given_it(tmp_path: Path) -> None:
    """bpftrace is one of the packages setup.sh installs (demo and tests alike): on a machine
    where dpkg says it is missing, the offline run stops naming it, and the distro this runs
    on has it to install (`apt-cache policy`: a candidate version)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    # dpkg-query answering "not installed" for bpftrace only; everything else asks the real one.
    (fake / "dpkg-query").write_text(
        '#!/bin/sh\nfor a; do [ "$a" = bpftrace ] && exit 1; done\nexec /usr/bin/dpkg-query "$@"\n'
    )
    (fake / "dpkg-query").chmod(0o755)
    env = {
        "PATH": f"{fake}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "FLEETTRACE_SETUP_OFFLINE": "1",
    }
    done = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 1, done
    (line,) = done.stderr.strip().splitlines()
    assert line == (
        "setup: installing packages: missing bpftrace and FLEETTRACE_SETUP_OFFLINE=1:"
        " install them first"
    )
    policy = subprocess.run(
        ["apt-cache", "policy", "bpftrace"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"Candidate: [0-9]", policy), policy
    assert subprocess.run(["bpftrace", "--version"], capture_output=True).returncode == 0
