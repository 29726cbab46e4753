"""A bpftrace map's keys: their names (the `keys` parameter) and bpftrace's joined key text split
back into fields.

bpftrace -f json prints a multi-field key as its fields joined by ",", and a traced host
controls the text of string fields (process and file names may hold commas), so the split
must be told, not guessed: how many fields (the names given, else what the script's key
expressions say, else the fewest pieces seen) and which are integers or stacks. A key with
more commas than fields is split only when exactly one split fits those kinds; otherwise it is
ambiguous and the caller counts it (see output.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from node_agent import bounds
from node_agent.bounds import MAX_COUNT, MAX_FIELDS, MAX_TEXT
from node_agent.errors import BadParameter
from node_agent.kinds import KeyField
from node_agent.protocol import KeyValue
from node_agent.safe_text import printable

FieldKind = Literal["int", "str", "stack", "any"]
KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_MAP = re.compile(r"@[A-Za-z0-9_]{0,63}")
_INT = re.compile(r"-?[0-9]{1,20}")
MAX_PIECES = 1024  # more commas than this in one key: refused as ambiguous (and cheap)


@dataclass(frozen=True)
class KeyNames:
    """Key field names: a map's own entry, else the default, else key0, key1, ..."""

    default: tuple[str, ...] = ()
    per_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def declared(self, map_name: str) -> tuple[str, ...]:
        return self.per_map.get(map_name, self.default)

    def names(self, map_name: str, arity: int) -> list[str]:
        given = self.declared(map_name)
        out = list(given[:arity])
        for i in range(len(out), arity):
            name = f"key{i}"
            while name in given:  # a declared `key1` keeps its name
                name += "_"
            out.append(name)
        return out


def _names(text: str, entry: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    for name in names:
        if not KEY_NAME.fullmatch(name):
            raise BadParameter(
                "params.keys", f"{entry!r}: {name!r} is not a name ([A-Za-z_][A-Za-z0-9_]*, ≤ 32)"
            )
    if len(set(names)) != len(names):
        raise BadParameter("params.keys", f"{entry!r}: a name repeats")
    if len(names) > MAX_FIELDS:
        raise BadParameter("params.keys", f"{entry!r}: more than {MAX_FIELDS} names")
    return names


def parse_keys(text: str) -> KeyNames:
    """`@map=a,b; c,d`: per-map key names, and a bare entry for every other map."""
    default: tuple[str, ...] = ()
    per_map: dict[str, tuple[str, ...]] = {}
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith("@"):
            map_name, eq, names = entry.partition("=")
            map_name = map_name.strip()
            if not eq or not _MAP.fullmatch(map_name):
                raise BadParameter("params.keys", f"{entry!r}: expected @map=name1,name2")
            if map_name in per_map:
                raise BadParameter("params.keys", f"{map_name} is named twice")
            per_map[map_name] = _names(names, entry)
        elif default:
            raise BadParameter("params.keys", f"{entry!r}: a second default entry (no @map=)")
        else:
            default = _names(entry, entry)
    return KeyNames(default=default, per_map=per_map)


def is_stack(text: str) -> bool:
    """bpftrace prints kstack/ustack as "\\n" then one indented frame per line."""
    return text.startswith("\n") and text.endswith("\n")


def fits(piece: str, kind: FieldKind) -> bool:
    if kind == "int":
        return _INT.fullmatch(piece) is not None
    if kind == "stack":
        return is_stack(piece) or piece == ""
    return True


def split_key(text: str, kinds: Sequence[FieldKind]) -> list[str] | None:
    """The key's fields, or None when the text does not split into exactly one sequence of
    fields of these kinds (too few pieces, or more than one way).

    Counted in O(fields x pieces): an int field takes one piece, a stack field runs from a
    piece starting with a newline to one ending with one, a string field takes any run."""
    pieces = text.split(",")
    n, k = len(pieces), len(kinds)
    if n == k:
        return pieces if all(fits(p, kind) for p, kind in zip(pieces, kinds, strict=True)) else None
    if n < k or n > MAX_PIECES or k == 0:
        return None
    closes = [p.endswith("\n") for p in pieces]
    # ways[i][j]: how many splits (capped at 2) put pieces[j:] into fields kinds[i:]
    ways = [[0] * (n + 1) for _ in range(k + 1)]
    ways[k][n] = 1
    for i in range(k - 1, -1, -1):
        after, here = ways[i + 1], ways[i]
        runs, stacks = [0] * (n + 2), [0] * (n + 2)  # sums of after[e] over e >= index
        for e in range(n, 0, -1):
            runs[e] = min(2, runs[e + 1] + after[e])
            stacks[e] = min(2, stacks[e + 1] + (after[e] if closes[e - 1] else 0))
        for j in range(n):
            here[j] = _ways_from(kinds[i], pieces[j], after[j + 1], runs[j + 1], stacks[j + 1])
    if ways[0][0] != 1:
        return None
    fields, j = [], 0
    for i, kind in enumerate(kinds):
        if kind == "int" or (kind == "stack" and not pieces[j].startswith("\n")):
            end = j + 1
        else:  # the one end with a way on (ways[i][j] == 1 sums exactly one)
            end = next(
                e
                for e in range(j + 1, n + 1)
                if ways[i + 1][e] and (kind != "stack" or closes[e - 1])
            )
        fields.append(",".join(pieces[j:end]))
        j = end
    return fields


def _ways_from(kind: FieldKind, piece: str, one: int, runs: int, stacks: int) -> int:
    """Splits of the rest when a field of this kind starts at this piece: `one` if it takes
    just the piece, `runs` if any run, `stacks` if a run ending in a stack's last line."""
    if kind == "int":
        return one if _INT.fullmatch(piece) else 0
    if kind == "stack":
        return stacks if piece.startswith("\n") else one if piece == "" else 0
    return runs


def stack_frames(text: str) -> list[str]:
    """A printed stack's frames, root first (bpftrace prints the innermost first)."""
    return [line.strip() for line in reversed(text.split("\n")) if line.strip()]


def clip(text: str) -> str:
    """Host text made printable and cut to one key value's bound."""
    return bounds.clip(printable(text[: MAX_TEXT + 1]))  # a 1 MB printf: cut, then escaped


def integer(value: object) -> int | None:
    """A JSON integer within the wire's bounds (bool, float, NaN and text are not)."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value <= MAX_COUNT:
        return value
    return None


def _int(text: str) -> int | None:
    if _INT.fullmatch(text) is None:
        return None
    return integer(int(text))


def _infer(column: list[str]) -> FieldKind:
    if column and all(_int(p) is not None for p in column):
        return "int"
    if column and all(is_stack(p) for p in column):
        return "stack"
    return "any"


class KeySplitter:
    """One print of one map's keys: how many fields, of what kinds, and their values.

    The arity is the names given (or the kinds given), else the fewest pieces any key of
    this print splits into; a field whose kind is not given is an int (or a stack) when every
    key of that arity has one there."""

    def __init__(self, name: str, names: KeyNames, kinds: Sequence[FieldKind] | None) -> None:
        self.name = name
        self.names = names
        declared = names.declared(name)
        self.arity: int | None = len(kinds) if kinds is not None else len(declared) or None
        given: list[FieldKind] = list(kinds) if kinds is not None else []
        self.kinds: list[FieldKind] = given

    def split_all(self, keys: Sequence[str], skipped: Counter[str]) -> list[list[str] | None]:
        """Each key's fields, None for one that does not split into exactly one set."""
        if not keys:
            self.kinds = self.kinds or ["any"] * (self.arity or 0)
            return []
        pieces = [key.split(",") for key in keys]
        arity = self.arity or min(len(p) for p in pieces)
        exact = [[key] for key in keys] if arity == 1 else [p for p in pieces if len(p) == arity]
        given = self.kinds + ["any"] * (arity - len(self.kinds))
        self.kinds = [
            k if k != "any" else _infer([p[i] for p in exact]) for i, k in enumerate(given[:arity])
        ]
        out: list[list[str] | None] = []
        for key in keys:
            fields = [key] if arity == 1 else split_key(key, self.kinds)
            if fields is None:
                skipped["key that does not split into its fields"] += 1
            out.append(fields)
        return out

    def has_stack(self) -> bool:
        return "stack" in self.kinds

    def fields(self) -> list[KeyField]:
        names = self.names.names(self.name, len(self.kinds))
        return [
            KeyField(name=n, type="int" if k == "int" else "str")
            for n, k in zip(names, self.kinds, strict=True)
        ]

    def values(self, fields: Sequence[str]) -> list[KeyValue]:
        out: list[KeyValue] = []
        for text, kind in zip(fields, self.kinds, strict=True):
            number = _int(text) if kind == "int" else None
            if kind == "stack":  # folded, root first, as a flame graph line names it
                text = ";".join(stack_frames(text))
            out.append(number if number is not None else clip(text))
        return out
