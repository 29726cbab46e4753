"""The kernel matrix: every catalog program on this host's kernel and on Debian's 6.1 and
6.12 kernels booted under QEMU, each through the agent's runner on a workload whose answer
is known (tests/kernel_matrix/guest.py), is right, or is unsupported with a reason naming
what is missing; a 6.1 boot without headers names the missing tree and its package; a
guest that hangs fails with its last output and leaves no QEMU. One boot per kernel; the
program x kernel table goes to test-artifacts/kernel-matrix.md.

Boots take /tmp/ft-vm.lock: without KVM a boot takes the machine's CPUs for minutes.
"""

from __future__ import annotations

import fcntl
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from devstack import kernels
from devstack import vm as devstack_vm
from node_agent.programs import catalog
from tests.kernel_matrix import vm
from tests.kernel_matrix.table import Column, problems, write
from tests.kernel_matrix.workloads import Row, rows

pytestmark = [pytest.mark.kernel_matrix, pytest.mark.timeout(1800)]  # with the VM lock's wait

VM_LOCK = Path("/tmp/ft-vm.lock")
HOST_TIMEOUT_S = 300.0
# A VM column: 171-217 s on a quiet 2-CPU machine, 253-312 s in a clean-clone CI run; CI
# runs have been up to 3.5 times slower, and one whole approximate column passed 900 s.
GUEST_TIMEOUT_S = 1200.0
HUNG_TIMEOUT_S = 90.0  # a boot is up in well under this, even emulated
ROWS = rows()
# Programs reading kernel struct members (attach options with `fields`): with approximate
# headers their offsets come from the kernel's BTF, and only a kernel with kprobes or fentry
# runs them. The other rows' only difference with approximate headers, the compile, is this
# host's own column (its headers are approximate).
LAYOUT_PROGRAMS = frozenset(
    name for name, spec in catalog().items() if any(option.fields for option in spec.attach)
)
ALL_VM_ROWS = os.environ.get("FLEETTRACE_VM_TESTS") == "1"  # as conftest's slow_vm gate


@dataclass
class Matrix:
    columns: list[Column] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    lock_wait_s: float = 0.0
    lock: IO[str] | None = None

    def add(self, column: Column) -> None:
        """Keep a kernel's column and rewrite the table with every column so far."""
        self.columns.append(column)
        write(self.columns, ROWS, time.monotonic() - self.started, self.lock_wait_s)

    def vm_lock(self) -> None:
        """The VM lock, from the first boot to the module's end: the boots one after another."""
        if self.lock is None:
            self.lock = VM_LOCK.open("a")
            waiting = time.monotonic()
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            self.lock_wait_s = time.monotonic() - waiting


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    made = Matrix()
    yield made
    if made.lock is not None:
        made.lock.close()  # and the lock with it


def _failure(run: vm.GuestRun, rows: list[Row] = ROWS) -> str:
    return "\n".join(problems(run, rows))


@pytest.mark.bcc
def test_this_hosts_kernel(matrix: Matrix, tmp_path: Path) -> None:
    run = vm.run_on_host(tmp_path / "share", timeout_s=HOST_TIMEOUT_S)
    matrix.add(Column(f"{platform.release()} (this host)", run, emulated=False))
    assert run.release() == platform.release()
    assert problems(run, ROWS) == [], _failure(run)


def _boot(
    matrix: Matrix,
    version: str,
    headers: kernels.HeadersMode,
    tmp: Path,
    approximate_from: Path | None = None,
    only: frozenset[str] | None = None,
) -> vm.GuestRun:
    kernel = kernels.fetch(version)
    modules = kernels.modules_tree(
        kernel, tmp / "modules", headers=headers, approximate_from=approximate_from
    )
    share = tmp / "share"
    matrix.vm_lock()
    run = vm.run_in_vm(
        kernel,
        modules,
        share,
        timeout_s=GUEST_TIMEOUT_S,
        name=f"matrix-{version}",
        only=sorted(only or ()),
    )
    assert kernels.qemu_pid(share / "qemu.pid") is None  # nothing left running
    assert run.release() in (None, kernel.release)
    return run


@pytest.mark.vm
@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_a_vm_kernel(matrix: Matrix, version: str, tmp_path: Path) -> None:
    run = _boot(matrix, version, "exact", tmp_path)
    matrix.add(Column(f"{run.release() or version} (VM)", run, emulated=True))
    assert problems(run, ROWS) == [], _failure(run)
    assert run.capabilities()["headers"] == "exact"
    # Debian's kernels with their own headers have every feature: nothing is unsupported,
    # every attach option of every program ran there, each by the point it names.
    for row in ROWS:
        record = run.programs()[row.name]
        assert record["status"] == "ok", record
        if row.attach is not None:
            assert str(record["attach"]).startswith(f"{row.attach}:"), record


@pytest.mark.vm
@pytest.mark.bcc  # this machine's headers tree, which setup links
def test_approximate_headers_say_so_and_answers_stay_right(matrix: Matrix, tmp_path: Path) -> None:
    """6.12 with this machine's headers (Debian's generic 6.1 ones), as `fleettrace dev up
    --kernel 6.12:approximate` links them and as users meet them: the probe says approximate
    naming the tree and the exact package, and every row is right or says why not.

    In CI, the rows of LAYOUT_PROGRAMS only (a whole column took CI over 900 s);
    FLEETTRACE_VM_TESTS=1 runs every row."""
    only = None if ALL_VM_ROWS else LAYOUT_PROGRAMS
    chosen = [r for r in ROWS if only is None or r.program in only]
    if only is not None:  # a subset, and not an empty one
        assert 0 < len(chosen) < len(ROWS), LAYOUT_PROGRAMS
    tree = devstack_vm.approximate_headers(kernels.fetch("6.12"))
    run = _boot(matrix, "6.12", "approximate", tmp_path, approximate_from=tree, only=only)
    release = run.release() or "6.12"
    matrix.add(Column(f"{release}, {tree.name} headers (VM)", run, emulated=True, only=only))
    assert problems(run, chosen) == [], _failure(run, chosen)
    assert set(run.programs()) == {r.name for r in chosen}, run.programs().keys()
    caps = run.capabilities()
    assert caps["headers"] == "approximate", caps
    assert str(tree) in caps["headers_detail"], caps
    assert f"linux-headers-{release}" in caps["headers_detail"], caps


@pytest.mark.vm
@pytest.mark.slow_vm  # 10 min emulated; tests/node_agent/headers/test_probe_report.py in CI
def test_no_headers_names_the_tree_and_the_package(matrix: Matrix, tmp_path: Path) -> None:
    run = _boot(matrix, "6.1", "none", tmp_path)
    release = run.release() or "6.1"
    matrix.add(Column(f"{release}, no headers (VM)", run, emulated=True))
    assert problems(run, ROWS) == [], _failure(run)
    caps = run.capabilities()
    build, package = f"/lib/modules/{release}/build", f"linux-headers-{release}"
    assert caps["headers"] == "none", caps
    assert build in caps["headers_detail"] and package in caps["headers_detail"], caps
    for name, spec in catalog().items():
        record = run.programs()[name]
        if spec.engine == "bcc":
            assert record["status"] == "unsupported", record
            assert package in record["reason"], record


@pytest.mark.vm
def test_a_hung_guest_fails_with_its_last_output_and_leaves_nothing(
    matrix: Matrix, tmp_path: Path
) -> None:
    kernel = kernels.fetch("6.1")
    modules = kernels.modules_tree(kernel, tmp_path / "modules", headers="exact")
    share = tmp_path / "share"
    hang = f"echo the guest began, then hung > {share / vm.GUEST_LOG}; exec sleep 3600"
    matrix.vm_lock()
    run = vm.run_in_vm(
        kernel, modules, share, timeout_s=HUNG_TIMEOUT_S, name="matrix-hung", command=hang
    )
    assert run.timed_out
    (said,) = problems(run, ROWS)
    assert f"did not finish within {HUNG_TIMEOUT_S:g} s" in said
    assert "the guest began, then hung" in said
    assert kernels.qemu_pid(share / "qemu.pid") is None
    assert run.launcher_pid is not None and not Path(f"/proc/{run.launcher_pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(run.launcher_pid, 0)  # nothing of the session vng ran in is left
