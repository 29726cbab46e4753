"""What a custom program's C may ask of the preprocessor, checked before anything compiles.

Only angle-bracket includes of kernel and bcc headers (`<linux/...>`, `<uapi/...>`,
`<net/...>`, `<asm/...>`, `<asm-generic/...>`, `<bcc/...>`), every path component a plain
name: no quoted, absolute, `..` or computed includes, no `#include_next`, `#line`, `#embed`,
line markers, `_Pragma`, `__has_include`, inline `asm` or `.incbin`, and only loop and
diagnostic pragmas. Token pasting can still spell some of these; the compile of a custom
program therefore runs where it can read no file outside system trees (runtime.sandbox), and
its output is filtered (runtime.compiler_output) so no error quotes another file's lines.
"""

from __future__ import annotations

import re

from node_agent.errors import PolicyViolation

HEADER_ROOTS = ("linux", "uapi", "net", "asm", "asm-generic", "bcc")
DIRECTIVES = frozenset(
    {
        "define",
        "undef",
        "if",
        "ifdef",
        "ifndef",
        "elif",
        "elifdef",
        "elifndef",
        "else",
        "endif",
        "error",
        "warning",
        "include",
        "pragma",
    }
)
PRAGMAS = frozenset({"unroll", "nounroll", "once"})
COMPILER_PRAGMAS = frozenset({"loop", "unroll", "diagnostic"})  # after `clang` or `GCC`
FORBIDDEN_NAMES = re.compile(
    r"\b(_Pragma|__has_include|__has_include_next|__has_embed|asm|__asm|__asm__)\b"
)
INCBIN = re.compile(r"incbin", re.IGNORECASE)  # the assembler's way to read a file
SPLICE = re.compile(r"\\[ \t\f\v]*\r?$")  # clang splices even with blanks after the backslash
COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
LITERALS = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
DIRECTIVE = re.compile(r"[ \t\f\v]*(?:#|%:)[ \t\f\v]*(.*)", re.DOTALL)
NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(.*)", re.DOTALL)
ANGLE = re.compile(r"<([^<>]*)>[ \t\f\v\r]*")
SHOWN = 120  # characters of a refused line quoted back


def check_source(source: str) -> None:
    """Refuse a custom program's source that reaches outside kernel and bcc headers."""
    _check_characters(source)
    starts, lines = _logical_lines(source)
    text = _blank_comments("\n".join(lines))
    for start, line in zip(starts, text.split("\n"), strict=True):
        if _check_directive(start, line) == "include":
            continue  # its header path passed the header rule (and may be <asm/...>)
        if INCBIN.search(line):
            raise PolicyViolation(f"source line {start}: .incbin is not allowed")
        bare = LITERALS.sub('""', line)
        found = FORBIDDEN_NAMES.search(bare)
        if found:
            raise PolicyViolation(f"source line {start}: {found.group(1)} is not allowed")


def check_header(path: str) -> str | None:
    """Why an angle-bracket include path is refused; None when it names an allowed header."""
    parts = path.split("/")
    if len(parts) < 2 or parts[0] not in HEADER_ROOTS:
        return "only " + ", ".join(f"<{root}/...>" for root in HEADER_ROOTS) + " headers"
    if not all(COMPONENT.fullmatch(part) for part in parts) or not path.endswith(".h"):
        return "a header path is plain names joined by '/', ending in .h (no '..', '.', '//')"
    return None


def _check_characters(source: str) -> None:
    for number, line in enumerate(source.split("\n"), start=1):
        if any(ord(c) < 0x20 and c not in "\t\r\f\v" for c in line) or "\x7f" in line:
            raise PolicyViolation(f"source line {number}: control characters are not allowed")
        if "??=" in line or "??/" in line:
            raise PolicyViolation(f"source line {number}: trigraphs are not allowed")


def _logical_lines(source: str) -> tuple[list[int], list[str]]:
    """Physical lines joined where a backslash ends them, with each one's first line number."""
    starts: list[int] = []
    lines: list[str] = []
    pending: str | None = None
    for number, physical in enumerate(source.split("\n"), start=1):
        if pending is None:
            starts.append(number)
            pending = ""
        spliced = SPLICE.search(physical)
        if spliced:
            pending += physical[: spliced.start()]
            continue
        lines.append(pending + physical)
        pending = None
    if pending is not None:
        lines.append(pending)
    return starts, lines


def _blank_comments(text: str) -> str:
    """Comments replaced by blanks (newlines kept), string and char literals left alone."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        pair = text[i : i + 2]
        if pair == "/*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(" " + re.sub(r"[^\n]", "", text[i:end]))
            i = end
        elif pair == "//":
            end = text.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _check_directive(start: int, line: str) -> str | None:
    """The directive a line holds, if it is allowed; raises if it is not."""
    match = DIRECTIVE.fullmatch(line)
    if match is None:
        return None
    rest = match.group(1)
    if not rest.strip():
        return None  # the null directive
    named = NAME.fullmatch(rest)
    shown = line.strip()[:SHOWN]
    if named is None:
        raise PolicyViolation(f"source line {start}: line markers are not allowed ({shown})")
    directive, args = named.group(1), named.group(2).strip()
    if directive not in DIRECTIVES:
        raise PolicyViolation(f"source line {start}: #{directive} is not allowed")
    if directive == "include":
        header = ANGLE.fullmatch(args)
        why = check_header(header.group(1)) if header else "only <...> includes"
        if why:
            raise PolicyViolation(f"source line {start}: {shown} is not allowed: {why}")
    elif directive == "pragma":
        words = args.split()
        ok = bool(words) and (
            words[0] in PRAGMAS
            or (words[0] in ("clang", "GCC") and len(words) > 1 and words[1] in COMPILER_PRAGMAS)
        )
        if not ok:
            raise PolicyViolation(f"source line {start}: {shown} is not allowed")
    return directive
