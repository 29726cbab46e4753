"""Terminal text for the client commands: aligned tables, ages, and styled-or-plain output.

Everything renders to plain lines first; a TTY only adds styles, so logs and tests see the
same text without ANSI codes.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TextIO

from node_agent.safe_text import printable

Style = Literal["", "title", "header", "note", "bad", "dim"]
STYLES = {"title": "bold", "header": "bold", "note": "yellow", "bad": "red", "dim": "dim"}
PLAIN_WIDTH = 120


@dataclass(frozen=True)
class Line:
    text: str
    style: Style = ""


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()
) -> list[str]:
    """Columns two spaces apart; `right[i]` right-aligns column i (numbers).

    Cells are made printable first: widths count what the terminal shows, one row per line.
    """
    header = [printable(h) for h in header]
    rows = [[printable(c) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            is_right = i < len(right) and right[i]
            out.append(cell.rjust(widths[i]) if is_right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return [fmt(header), *(fmt(row) for row in rows)]


def table_lines(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Sequence[bool] = (),
    styles: Sequence[Style] = (),
) -> list[Line]:
    """`table` as Lines: the header styled, row i styled `styles[i]` (e.g. red when it failed)."""
    head, *body = table(header, rows, right)
    return [
        Line(head, "header"),
        *(Line(t, styles[i] if i < len(styles) else "") for i, t in enumerate(body)),
    ]


def clip(text: str, width: int, *, keep: Literal["start", "end"] = "start") -> str:
    """At most `width` characters; the cut side shows '...'."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    return text[: width - 3] + "..." if keep == "start" else "..." + text[-(width - 3) :]


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def since(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    now = now or datetime.now(timezone.utc)
    return age((now - moment).total_seconds()) + " ago"


def when(moment: datetime | None) -> str:
    """A UTC time from the API in local time, to the second."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def side_by_side(blocks: Sequence[Sequence[str]], width: int, gap: int = 4) -> list[str]:
    """Blocks next to each other while they fit in `width`, then on the following rows."""
    if not blocks:
        return []
    blocks = [[printable(line) for line in block] for block in blocks]
    block_width = max(len(line) for block in blocks for line in block)
    per_row = max(1, (width + gap) // (block_width + gap))
    lines: list[str] = []
    for start in range(0, len(blocks), per_row):
        row = blocks[start : start + per_row]
        height = max(len(b) for b in row)
        if lines:
            lines.append("")
        for i in range(height):
            cells = [(b[i] if i < len(b) else "").ljust(block_width) for b in row]
            lines.append((" " * gap).join(cells).rstrip())
    return lines


def terminal_width(stream: TextIO | None = None) -> int:
    stream = stream or sys.stdout
    if not stream.isatty():
        return PLAIN_WIDTH
    return shutil.get_terminal_size((PLAIN_WIDTH, 24)).columns


def emit(lines: Sequence[Line], stream: TextIO | None = None) -> None:
    """Styled on a terminal, plain text otherwise (pipes, logs, tests); never a raw control
    character either way."""
    stream = stream or sys.stdout
    lines = [Line(printable(line.text), line.style) for line in lines]
    if not stream.isatty():
        stream.write("".join(line.text + "\n" for line in lines))
        stream.flush()
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, highlight=False)
    for line in lines:
        # soft_wrap: a wide table wraps in the terminal rather than being cut or re-flowed.
        console.print(Text(line.text, style=STYLES.get(line.style, "")), soft_wrap=True)


def emit_text(text: str, stream: TextIO | None = None) -> None:
    emit([Line(t) for t in text.splitlines()], stream)


def redrawn(renderable: Any, stream: TextIO, live: bool) -> AbstractContextManager[Any]:
    """`renderable` redrawn in place on a terminal (entering gives rich's Live); else nothing."""
    if not live:
        return nullcontext()
    from rich.console import Console
    from rich.live import Live

    return Live(renderable, console=Console(file=stream), refresh_per_second=4)
