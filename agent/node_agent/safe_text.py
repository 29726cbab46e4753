"""Untrusted text made safe for a terminal: a traced host names files, processes and symbols.

One function for every line the CLIs print (and the first step of every text export): C0 and
C1 control characters, DEL, lone surrogates and bidi overrides become visible escapes, so a
file named `\\x1b]0;PWNED\\x07` cannot retitle or clear the operator's terminal and a newline in
a path cannot split a table row.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` on one line with every control character shown as an escape (`\\x1b`, `\\n`)."""
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Each line of `text` made printable; the line breaks (`\\n`) themselves are kept."""
    return "\n".join(printable(line) for line in text.split("\n"))
