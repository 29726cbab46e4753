"""The stdout reader: every line queued, an overlong one left out, EOF always last."""

from __future__ import annotations

import io
import queue

from node_agent.bpftrace.process import EOF, TOO_LONG, _read_lines


def _drain(out: queue.Queue[object]) -> list[object]:
    items = []
    while not out.empty():
        items.append(out.get_nowait())
    return items


def test_a_line_above_the_bound_is_left_out_and_the_next_ones_kept() -> None:
    out: queue.Queue[object] = queue.Queue()
    text = 'a\n{"x": "' + "y" * 100 + '"}\nb\n' + "z" * 9 + "\n" + "w" * 10 + "\nc"
    _read_lines(io.StringIO(text), out, max_line=10)  # characters, the newline included
    assert _drain(out) == ["a\n", TOO_LONG, "b\n", "z" * 9 + "\n", TOO_LONG, "c", EOF]


class _Failing(io.StringIO):
    def readline(self, size: int | None = -1, /) -> str:
        if self.tell() > 0:
            raise MemoryError
        return super().readline(size)


def test_a_reader_that_fails_still_ends_with_eof() -> None:
    # Without EOF the run loop would wait for it until the runner's hard deadline.
    out: queue.Queue[object] = queue.Queue()
    _read_lines(_Failing("first\nsecond\n"), out, max_line=100)
    assert _drain(out) == ["first\n", EOF]
