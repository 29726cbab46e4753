"""The structure of a bpftrace script, read the way bpftrace's own lexer reads it.

Enough of it to check policy and to instrument a script without running bpftrace:
preprocessor lines, C type definitions (`struct/union/enum X { ... };`) and probe blocks
`attach[, attach...] [/predicate/] { body }`. Attach points are read as bpftrace reads them,
as paths (`uprobe:/bin/bash:readline`, `uprobe:/lib/*.so:f`), never as comments or division.
A predicate ends at the `/` that is followed by the body's `{` (a predicate may divide).
Bodies and predicates are split into tokens; strings and comments are single tokens, so a
`system(` inside a string or comment is text, not a call.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass, field
from enum import Enum

from node_agent.errors import PolicyViolation


class Kind(str, Enum):
    comment = "comment"
    string = "string"
    map = "map"  # @name or @
    var = "var"  # $name or $1
    ident = "ident"
    number = "number"
    punct = "punct"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str
    start: int  # offset in the script
    line: int  # 1-based


@dataclass(frozen=True)
class Probe:
    attach: tuple[str, ...]
    line: int  # of the first attach point
    predicate: tuple[int, int] | None  # offsets of the opening and the closing `/`
    body: tuple[int, int]  # offsets of `{` and its `}`
    tokens: tuple[Token, ...]  # of the predicate and the body, without comments


@dataclass
class Script:
    text: str
    probes: list[Probe] = field(default_factory=list)
    preprocessor: list[tuple[int, str]] = field(default_factory=list)  # (line, text)
    definitions: list[tuple[int, str]] = field(default_factory=list)  # (line, `struct X`)

    def __post_init__(self) -> None:
        # Every token asks for its line: a search, not a count from the start each time.
        self._newlines = [m.start() for m in re.finditer("\n", self.text)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F_]+|[0-9][0-9_]*(?:[eE][0-9]+)?")
_PUNCT = re.compile(r"->|<<=|>>=|<<|>>|<=|>=|==|!=|&&|\|\||\+\+|--|[-+*/%&|^]=|[^\s]")
_MAP = re.compile(r"@[A-Za-z0-9_]*")
_VAR = re.compile(r"\$[A-Za-z0-9_]+")
_DEFINITION = re.compile(r"(struct|union|enum)\b[^{;]*\{")
_SPACE = " \t\r\n\f\v"
_PAIRS = {"{": "}", "(": ")", "[": "]"}


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.script = Script(text)

    def fail(self, offset: int, what: str) -> PolicyViolation:
        line = self.script.line_of(offset)
        return PolicyViolation(f"the script does not parse at line {line}: {what}")

    def skip_space(self, pos: int) -> int:
        """Past whitespace and comments."""
        text = self.text
        while pos < len(text):
            if text[pos] in _SPACE:
                pos += 1
            elif text.startswith("//", pos):
                end = text.find("\n", pos)
                pos = len(text) if end < 0 else end
            elif text.startswith("/*", pos):
                end = text.find("*/", pos + 2)
                if end < 0:
                    raise self.fail(pos, "a comment is not closed")
                pos = end + 2
            else:
                break
        return pos

    def string_end(self, pos: int) -> int:
        """The offset just past the string starting at pos (a `"`)."""
        text = self.text
        i = pos + 1
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                return i + 1
            if ch == "\n":
                break
            i += 1
        raise self.fail(pos, "a string is not closed on its line")

    def token(self, pos: int) -> Token:
        """The token at pos (not whitespace)."""
        text = self.text
        line = self.script.line_of(pos)
        if text.startswith("//", pos) or text.startswith("/*", pos):
            end = self.skip_space(pos)
            return Token(Kind.comment, text[pos:end], pos, line)
        ch = text[pos]
        if ch == '"':
            return Token(Kind.string, text[pos : self.string_end(pos)], pos, line)
        for kind, pattern in (
            (Kind.map, _MAP),
            (Kind.var, _VAR),
            (Kind.ident, _IDENT),
            (Kind.number, _NUMBER),
            (Kind.punct, _PUNCT),
        ):
            match = pattern.match(text, pos)
            if match:
                return Token(kind, match.group(), pos, line)
        raise self.fail(pos, f"unexpected {ch!r}")  # pragma: no cover - _PUNCT takes any char

    def preprocessor(self, pos: int) -> int:
        """A `#...` line (with `\\` continuations); the offset past it."""
        text = self.text
        end = pos
        while True:
            nl = text.find("\n", end)
            if nl < 0:
                end = len(text)
                break
            if text[end:nl].rstrip().endswith("\\"):
                end = nl + 1
                continue
            end = nl
            break
        self.script.preprocessor.append((self.script.line_of(pos), text[pos:end]))
        return end

    def definition(self, pos: int, match: re.Match[str]) -> int:
        """A C type definition, `struct X { ... };`, read as bpftrace reads it: braces counted
        one by one, blind to comments and strings. So none is allowed inside (a `}` in a
        comment would end it for bpftrace and not for clang, or the other way round), nor a
        `#`: clang would run an `#include </any/file>` or a `#define` of the scope's names."""
        text = self.text
        depth = 0
        for i in range(pos, len(text)):  # from `struct`: its name may span lines too
            if text.startswith(("/*", "//"), i) or text[i] in "\"'":
                raise self.fail(i, "no comments or quotes inside a type definition")
            if text[i] == "#":
                raise self.fail(i, "no preprocessor lines inside a type definition")
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    name = " ".join(match.group()[:-1].split())
                    self.script.definitions.append((self.script.line_of(pos), name))
                    after = self.skip_space(i + 1)
                    return after + 1 if text.startswith(";", after) else i + 1
        raise self.fail(pos, "a type definition's braces are not closed")

    def attach_point(self, pos: int) -> int:
        """One attach point: everything up to whitespace, `,` or `{`; quoted parts whole."""
        text = self.text
        i = pos
        while i < len(text) and text[i] not in _SPACE and text[i] not in ",{":
            i = self.string_end(i) if text[i] == '"' else i + 1
        return i

    def tokens_until(self, pos: int, stop: str) -> tuple[list[Token], int]:
        """Tokens from pos to the end of a predicate (stop "/") or a block (stop "}").

        Returns the tokens (comments left out) and the offset of the closing character.
        """
        tokens: list[Token] = []
        opened: list[str] = []
        text = self.text
        i = pos
        while True:
            i = self.skip_space(i)
            if i >= len(text):
                what = "a predicate is not closed" if stop == "/" else "a block is not closed"
                raise self.fail(pos, what)
            if stop == "/" and text[i] == "/" and not opened:
                after = self.skip_space(i + 1)
                if text.startswith("{", after):
                    return tokens, i
            token = self.token(i)
            if token.text in ("{", "(", "["):
                opened.append(token.text)
            elif token.text in ("}", ")", "]"):
                if not opened and token.text == "}" and stop == "}":
                    return tokens, i
                # Balanced, or `/pid) || (1/` would escape the scope's `(scope) && (...)`.
                if not opened or _PAIRS[opened.pop()] != token.text:
                    raise self.fail(i, f"unbalanced {token.text!r}")
            tokens.append(token)
            i = token.start + len(token.text)

    def probe(self, pos: int) -> int:
        text = self.text
        attach: list[str] = []
        i = pos
        while True:
            end = self.attach_point(i)
            if end == i:
                raise self.fail(i, f"expected an attach point, found {text[i]!r}")
            attach.append(text[i:end])
            i = self.skip_space(end)
            if not text.startswith(",", i):
                break
            i = self.skip_space(i + 1)
        predicate: tuple[int, int] | None = None
        tokens: list[Token] = []
        if text.startswith("/", i):
            tokens, close = self.tokens_until(i + 1, "/")
            predicate = (i, close)
            i = self.skip_space(close + 1)
        if not text.startswith("{", i):
            raise self.fail(i, "expected '{' after the attach points")
        body, close = self.tokens_until(i + 1, "}")
        line = self.script.line_of(pos)
        self.script.probes.append(
            Probe(tuple(attach), line, predicate, (i, close), tuple(tokens + body))
        )
        return close + 1

    def read(self) -> Script:
        text = self.text
        pos = self.skip_space(0)
        while pos < len(text):
            line_start = text.rfind("\n", 0, pos) + 1
            definition = _DEFINITION.match(text, pos)
            if text[pos] == "#" and not text[line_start:pos].strip():
                pos = self.preprocessor(pos)
            elif definition:
                pos = self.definition(pos, definition)
            else:
                pos = self.probe(pos)
            pos = self.skip_space(pos)
        return self.script


@functools.lru_cache(maxsize=8)  # one prepare reads the same script several times
def parse(text: str) -> Script:
    """The script's structure (shared: never to be changed); PolicyViolation naming the line
    where it cannot be read."""
    return _Reader(text).read()
