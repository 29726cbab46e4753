"""The escapes themselves, case by case: terminal, Markdown, folded, flame graph depth."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from controller.cli.text import Line, emit, table
from controller.reports import svg
from controller.reports.exports import _base_labels, folded_frame
from controller.reports.flame import MAX_DEPTH, layout
from controller.reports.render_md import md_text
from node_agent.protocol import FoldedStacks, StackCount
from node_agent.safe_text import printable, printable_lines

TERMINAL_CASES = {
    "OSC title, bell, clear": ("\x1b]0;PWNED\x07\x1b[2J", "\\x1b]0;PWNED\\x07\\x1b[2J"),
    "newline and tab": ("a\nb\tc", "a\\nb\\tc"),
    "carriage return": ("ok\rEVIL", "ok\\rEVIL"),
    "NUL and DEL": ("a\x00\x7f", "a\\x00\\x7f"),
    "C1 CSI": ("\x9b2J", "\\x9b2J"),
    "lone surrogate": ("x\udc80", "x\\udc80"),
    "bidi override": ("\u202egnp.exe", "\\u202egnp.exe"),
    "plain unicode stays": ("naïve → ok 名前", "naïve → ok 名前"),
}


@pytest.mark.parametrize(("raw", "shown"), list(TERMINAL_CASES.values()), ids=list(TERMINAL_CASES))
def test_printable_shows_every_control_character_as_an_escape(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown  # idempotent: escaping twice changes nothing
    shown.encode("utf-8")  # no surrogate left: it can be written anywhere


def test_printable_lines_keeps_line_breaks_only() -> None:
    assert printable_lines("a\x1b[2J\nb\r\n") == "a\\x1b[2J\nb\\r\n"


def test_a_newline_in_a_cell_does_not_split_the_table_row() -> None:
    lines = table(["COMM", "PATH"], [["cat", "/tmp/a\nb"], ["sh", "/etc/passwd"]])
    assert len(lines) == 3
    assert lines[1] == "cat   /tmp/a\\nb"


def test_emit_never_writes_a_raw_control_character() -> None:
    out = io.StringIO()
    emit([Line("title \x1b]0;PWNED\x07"), Line("x\x9b2J", "bad")], out)
    assert out.getvalue() == "title \\x1b]0;PWNED\\x07\nx\\x9b2J\n"


MARKDOWN_CASES = {
    "raw HTML": ("<img src=x onerror=alert(1)>", "\\<img src=x onerror=alert(1)\\>"),
    "link": ("[x](javascript:alert(1))", "\\[x\\](javascript:alert(1))"),
    "backticks, pipes": ("`a|b`", "\\`a\\|b\\`"),
    "emphasis": ("*a* _b_", "\\*a\\* \\_b\\_"),
    "entity": ("&#106;", "\\&\\#106;"),
    "control characters": ("a\x1b[2J\n# b", "a\\\\x1b\\[2J\\\\n\\# b"),
}


@pytest.mark.parametrize(("raw", "md"), list(MARKDOWN_CASES.values()), ids=list(MARKDOWN_CASES))
def test_md_text_escapes_markup(raw: str, md: str) -> None:
    assert md_text(raw) == md


@pytest.mark.parametrize(
    ("raw", "md"),
    [("# title", "\\# title"), ("1. item", "1\\. item"), ("- item", "\\- item"), ("+ x", "\\+ x")],
)
def test_md_text_at_a_block_start_escapes_block_syntax(raw: str, md: str) -> None:
    assert md_text(raw, block_start=True) == md


def test_folded_frames_cannot_split_or_end_a_line() -> None:
    assert folded_frame("a;b") == "a\\x3bb"
    assert folded_frame("a\nb 5") == "a\\nb 5"
    assert folded_frame("C:\\x3b") == "C:\\\\x3b"  # a literal backslash is doubled: no clash


def test_openmetrics_label_names_are_unique_and_valid() -> None:
    pairs = _base_labels("web-1", {"a-b": 1, "a.b": 2, "le": 3, "host": 4, "__x": 5, "9z": 6})
    names = [k for k, _ in pairs]
    assert names == ["host", "a_b", "a_b_2", "le_2", "host_2", "l__x", "_9z"]


def _deep(depth: int) -> list[FoldedStacks]:
    shared = [f"f{i}" for i in range(depth // 2)]
    stacks = [
        # Deeper than the protocol lets an agent send (MAX_STACK_DEPTH): the layout must hold
        # whatever a stored report holds, so it is built here without the protocol's check.
        StackCount.model_construct(
            frames=[*shared, *(f"s{s}_{i}" for i in range(depth - depth // 2))], count=1
        )
        for s in range(4)
    ]
    return [FoldedStacks(name="stacks", stacks=stacks)]


def _peak(depth: int, max_depth: int) -> int:
    stacks = _deep(depth)
    tracemalloc.start()
    try:
        svg.flame(layout(stacks, max_depth=max_depth), "flame")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_flame_layout_memory_grows_linearly_with_depth() -> None:
    # Quadratic (a path per box) quadruples per doubling: 2,000 -> 8,000 frames would be 16x.
    small, large = _peak(2000, 2000), _peak(8000, 8000)
    assert large < 6 * small, (small, large)
    assert large < 60e6  # it was 514 MB for 8,000 frames


def test_deep_stacks_are_cut_at_the_cap_and_say_so() -> None:
    found = layout(_deep(8000))
    assert found.cut == 4
    assert max(f.depth for f in found.frames) == MAX_DEPTH - 1
    assert _peak(8000, MAX_DEPTH) < 5e6


HOSTILE_NOTE = "[link=javascript:alert(1)]click[/link] \x1b]0;PWNED\x07"


def _on_a_terminal(renderable: object) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, force_terminal=True, width=200).print(renderable)
    return out.getvalue()


def test_the_live_job_table_shows_notes_as_text_not_markup() -> None:
    from controller.cli.follow import Progress

    job = {
        "id": "j1",
        "program": "opens",
        "duration_s": 1,
        "state": "running",
        "runs": [{"host": "web-1", "state": "failed", "snapshots": 0, "reason": HOSTILE_NOTE}],
    }
    shown = _on_a_terminal(Progress(job, clock=lambda: 0.0))
    assert "\x1b]" not in shown  # no OSC: neither a title nor a hyperlink (rich's [link])
    assert "[link=javascript:alert(1)]" in shown and "\\x1b]0;PWNED\\x07" in shown


def test_the_live_bootstrap_table_shows_errors_as_text_not_markup() -> None:
    from controller.cli.bootstrap import Watch

    run = {"id": "r1", "kind": "bootstrap", "state": "failed", "error": HOSTILE_NOTE, "steps": []}
    shown = _on_a_terminal(Watch({"web-1": run}, clock=lambda: 0.0))
    assert "\x1b]" not in shown
    assert "[link=javascript:alert(1)]" in shown
