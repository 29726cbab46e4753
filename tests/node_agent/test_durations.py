"""One grammar for durations (node_agent.durations): parsed, written back, and nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node_agent import durations

REPO = Path(__file__).resolve().parents[2]
# A regex alternation of time units, as a second grammar would spell it ("s|m|h", "h|d|w").
UNIT_ALTERNATION = re.compile(r"\b(?:ms|s|m|h|d|w)\|(?:ms|s|m|h|d|w)\b")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        (" 2m ", 120.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("0", 0.0),
    ],
)
def test_the_grammar(text: str, seconds: float) -> None:
    assert durations.parse(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1s", "1y", "1 h 2m", "1e3", "5 minutes", "0x10"])
def test_what_is_not_a_duration(text: str) -> None:
    assert durations.parse(text) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (10, "10s"), (90, "90s"), (120, "2m"), (3600, "1h"), (86400, "1d"),
     (1209600, "2w"), (1.25, "1.25s"), (5400, "90m")],
)  # fmt: skip
def test_seconds_are_written_back_in_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert durations.text(seconds) == text
    assert durations.parse(text) == seconds


def test_no_other_module_spells_a_duration_grammar() -> None:
    """The controller, the console's scripts, the agent and the dev tools parse durations
    through node_agent.durations only."""
    found = []
    for top in ("controller", "agent", "tools", "bench"):
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix not in {".py", ".js", ".html"} or "__pycache__" in path.parts:
                continue
            if UNIT_ALTERNATION.search(path.read_text()):
                found.append(path.relative_to(REPO).as_posix())
    assert found == ["agent/node_agent/durations.py"]
