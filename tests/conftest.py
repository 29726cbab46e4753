"""Shared fixtures: privileged-test gating and a helper that runs a real trace."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import cgroup_name

IN_CI = bool(os.environ.get("CI"))
# The VM tests CI's time cannot also hold beside the kernel matrix's and the dev stack's
# ~35 min (the kheaders boot, ~6 min; the matrix's no-headers column, ~10 min, whose probe
# report tests/node_agent/headers/test_probe_report.py checks on this host): they run when
# asked for.
RUN_SLOW_VM = os.environ.get("FLEETTRACE_VM_TESTS") == "1"
SLOW_VM_SKIP = "a slow VM test beyond CI's time: FLEETTRACE_VM_TESTS=1 runs it"


def _bcc_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs python3-bpfcc (bcc from the distro)"
    if not Path("/sys/kernel/tracing/events").is_dir():
        return "needs tracefs at /sys/kernel/tracing"
    return None


def _vm_problem() -> str | None:
    """What a VM host needs beyond bcc: QEMU, virtme-ng and what virtme runs in the guest."""
    from devstack.kernels import vng_path

    os_release = Path("/etc/os-release")
    distro = os_release.read_text() if os_release.exists() else ""
    if "\nID=debian" not in f"\n{distro}":
        return "boots Debian's 6.1 and 6.12 kernels, which only a Debian system's apt fetches"
    for tool in ("qemu-system-x86_64", "busybox", "depmod", "file", "apt-get"):
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
            return f"needs {tool} (bash scripts/setup.sh --for tests)"
    if not vng_path().exists():
        return "needs virtme-ng in the venv (bash scripts/setup.sh --for tests)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = _bcc_problem()
    vm_problem = problem or _vm_problem()
    for item in items:
        if item.get_closest_marker("slow_vm") and not RUN_SLOW_VM:
            item.add_marker(pytest.mark.skip(reason=SLOW_VM_SKIP))
            continue
        if item.get_closest_marker("vm") and vm_problem is not None:
            # In CI, as for bcc: a VM test that cannot run fails.
            item.add_marker(
                pytest.mark.xfail(reason=vm_problem, strict=True, run=False)
                if IN_CI
                else pytest.mark.skip(reason=vm_problem)
            )
            continue
        if problem is None:
            continue
        if item.get_closest_marker("bcc") or item.get_closest_marker("root"):
            if IN_CI:
                # In CI the real tests must run: a missing bcc or root fails them.
                item.add_marker(pytest.mark.xfail(reason=problem, strict=True, run=False))
                item.add_marker(pytest.mark.usefixtures("_fail_in_ci"))
            else:
                item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture
def _fail_in_ci() -> None:
    pytest.fail(f"CI requires the privileged tests to run: {_bcc_problem()}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed and reaped afterwards whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def cgroup2_root() -> Path:
    from node_agent.scope import cgroup2_mount

    root = cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy")
    return root


@pytest.fixture
def make_cgroup(cgroup2_root: Path) -> Iterator[Callable[[str], Path]]:
    """Create cgroup v2 groups for a test; they are emptied and removed afterwards."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = cgroup2_root / cgroup_name(name)
        path.mkdir()
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        procs = (path / "cgroup.procs").read_text().split()
        for pid in procs:
            with contextlib.suppress(OSError):
                (cgroup2_root / "cgroup.procs").write_text(pid)
        path.rmdir()
