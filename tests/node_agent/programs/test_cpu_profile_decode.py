"""cpu_profile's decoder on hand-made map contents: frame order, markers, truncation."""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Any

from node_agent.programs.cpu_profile import SPEC
from node_agent.programs.spec import DecodeContext
from node_agent.protocol import FoldedStacks, Limits


class FakeProgram:
    def __init__(self, counts: list[tuple[Any, int]], stacks: dict[int, list[int]]) -> None:
        self.counts = counts
        self.stacks = stacks

    def items(self, table: str) -> list[tuple[Any, Any]]:
        assert table == "counts"
        return list(self.counts)

    def stack(self, table: str, stack_id: int) -> list[int]:
        return self.stacks.get(stack_id, []) if stack_id >= 0 else []

    def symbolize(self, addr: int, pid: int | None) -> str:
        return f"k{addr:x}" if pid is None else f"u{addr:x}"


def _key(tgid: int, comm: str, user: int, kernel: int) -> SimpleNamespace:
    return SimpleNamespace(
        tgid=tgid, comm=comm.encode() + b"\0", user_stack_id=user, kernel_stack_id=kernel
    )


def _decode(program: FakeProgram, max_rows: int = 100, **params: Any) -> FoldedStacks:
    ctx = DecodeContext(
        program,  # type: ignore[arg-type]
        SPEC.validate_params(params),
        Limits(max_rows=max_rows),
    )
    (result,) = SPEC.decode(ctx)
    assert isinstance(result, FoldedStacks)
    return result


def test_frames_are_root_first_with_kernel_suffix_and_missing_markers() -> None:
    program = FakeProgram(
        [
            (_key(100, "app", 1, 2), 5),
            (_key(100, "app", -errno.EEXIST, 2), 3),  # collision: the user stack is lost
            (_key(100, "app", 1, -errno.EFAULT), 7),  # a user-mode sample: no kernel stack
            (_key(7, "kworker", -errno.EFAULT, -errno.ENOMEM), 1),
        ],
        # Innermost first, as the kernel stores them.
        {1: [0x30, 0x20, 0x10], 2: [0xB, 0xA]},
    )
    folded = _decode(program).folded()
    assert folded == [
        "app;u10;u20;u30 7",
        "app;u10;u20;u30;ka_[k];kb_[k] 5",
        "app;[Missing User Stack];ka_[k];kb_[k] 3",
        "kworker;[Missing Kernel Stack] 1",
    ]


def test_equal_stacks_merge_and_max_rows_keeps_the_largest() -> None:
    program = FakeProgram(
        [
            (_key(1, "a", 1, -1), 2),
            (_key(2, "a", 1, -1), 2),  # same comm and frames: one folded line
            (_key(3, "b", 1, -1), 3),
            (_key(4, "c", 1, -1), 1),
        ],
        {1: [0x5]},
    )
    result = _decode(program, max_rows=1, kernel=False)
    assert [s.count for s in result.stacks] == [4]
    assert result.stacks[0].frames[0] == "a"
    assert result.total_rows == 3 and result.truncated
