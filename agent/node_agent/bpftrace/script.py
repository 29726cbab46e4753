"""A bpftrace script as the agent sees it before running it: what it may do (policy), and
what fills each of its maps (for reading bpftrace's output)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from node_agent.bpftrace.syntax import Kind, Script, Token, parse
from node_agent.errors import PolicyViolation

MAX_SCRIPT = 65_536  # characters
MAX_LINES = 4_000
MAX_PROBES = 200  # probe blocks written in the script; BPFTRACE_MAX_PROBES bounds wildcards

# Builtins that change the system or read the host beyond the traced events. bpftrace 0.17
# itself refuses the first three without --unsafe (man bpftrace: "unsafe"); `cat` reads any
# file on the host as root; `skboutput` creates (truncates) any path as root (pcap_dump_open)
# on builds with libpcap. bpftrace 0.17's other builtins touch no file.
REFUSED_CALLS = {
    "system": "runs a command on the host",
    "signal": "sends signals to traced processes",
    "override": "changes a kernel function's return value",
    "cat": "reads files on the host",
    "skboutput": "writes files on the host",
}
# The kernel types the scope's cgroup predicate reads (instrument.py): never redefined.
SCOPE_TYPES = frozenset({"struct cgroup", "struct kernfs_node", "struct css_set"})
WILDCARDS = "*?[{"
AGGREGATIONS = ("count", "sum", "min", "max", "avg", "stats", "hist", "lhist")
# What a key expression prints as, so that bpftrace's comma-joined keys split back exactly.
KeyKind = Literal["int", "str", "stack", "any"]
_INT_BUILTINS = frozenset(
    {"pid", "tid", "uid", "gid", "cpu", "cgroup", "nsecs", "elapsed", "retval", "rand", "numaid"}
    | {f"arg{i}" for i in range(10)}
    | {f"sarg{i}" for i in range(10)}
)
_STR_BUILTINS = frozenset({"comm", "probe", "func", "username"})
_STR_CALLS = frozenset(
    {"str", "ksym", "usym", "path", "cgroup_path", "strftime", "ntop", "buf", "macaddr"}
)
_STACKS = frozenset({"kstack", "ustack"})
_INCLUDE = re.compile(r"#\s*include\s*<([A-Za-z0-9_./+-]+)>\s*$")
_DEFINE = re.compile(r"#\s*define\s+[A-Z_][A-Z0-9_]*\s+-?(?:0[xX][0-9a-fA-F]+|[0-9]+)\s*$")
_INT = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)")


def _check_preprocessor(line: int, text: str) -> None:
    include = _INCLUDE.match(text)
    if include:
        name = include.group(1)
        if ".." in name.split("/") or name.startswith("/"):
            # clang would read any file as root, and echo its lines in the error messages
            raise PolicyViolation(
                f"line {line}: #include names a header below the system include directories"
                f" (no absolute path, no '..'): {text!r}"
            )
        return
    if text.lstrip("# \t").startswith("include"):
        raise PolicyViolation(
            f"line {line}: only system headers may be included (#include <name.h>): {text!r}"
        )
    if not _DEFINE.match(text):
        raise PolicyViolation(
            f"line {line}: only #include <header> and #define UPPER_CASE <integer> are allowed:"
            f" {text[:80]!r}"
        )


def _check_calls(tokens: tuple[Token, ...]) -> None:
    for i, token in enumerate(tokens):
        if token.kind is not Kind.ident or token.text not in REFUSED_CALLS:
            continue
        if i and tokens[i - 1].text in (".", "->"):
            continue  # a struct field, e.g. curtask->signal
        why = REFUSED_CALLS[token.text]
        raise PolicyViolation(f"line {token.line}: {token.text}() is not allowed: it {why}")


def read_script(script: str) -> Script:
    """The script's structure, within the size bounds; PolicyViolation if not."""
    if not script.strip():
        raise PolicyViolation("the script is empty")
    if len(script) > MAX_SCRIPT:
        raise PolicyViolation(f"the script is {len(script)} characters, above {MAX_SCRIPT}")
    lines = script.count("\n") + 1
    if lines > MAX_LINES:
        raise PolicyViolation(f"the script has {lines} lines, above {MAX_LINES}")
    parsed = parse(script)
    if not parsed.probes:
        raise PolicyViolation("the script has no probe")
    if len(parsed.probes) > MAX_PROBES:
        raise PolicyViolation(f"the script has {len(parsed.probes)} probes, above {MAX_PROBES}")
    return parsed


def check_script(script: str) -> None:
    """Refuse a script that must not run, naming why and where; PolicyViolation."""
    parsed = read_script(script)
    for line, text in parsed.preprocessor:
        _check_preprocessor(line, text)
    for line, name in parsed.definitions:
        if name in SCOPE_TYPES:
            raise PolicyViolation(f"line {line}: {name} may not be redefined (the scope reads it)")
    for probe in parsed.probes:
        if "BEGIN" in probe.attach and (len(probe.attach) > 1 or probe.predicate is not None):
            raise PolicyViolation(
                f"line {probe.line}: BEGIN must be a probe of its own, without a predicate"
                " (the agent learns from it that every probe is attached)"
            )
        _check_calls(probe.tokens)


def minimum_probes(script: str) -> int:
    """How many probes bpftrace must attach at least: one per attach point without a
    wildcard (bpftrace 0.17 skips a named function or symbol that is missing, silently)."""
    return sum(
        1
        for probe in parse(script).probes
        for attach in probe.attach
        if not any(c in attach for c in WILDCARDS)
    )


_ASSIGNS = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="})
_STEPS = frozenset({"++", "--"})
# Writes whose values add up across hosts and intervals, like sum(): `@[comm]++`, `@x += n`.
_SUMS = frozenset({"++", "--", "+=", "-="})


@dataclass(frozen=True)
class _Write:
    map: Token
    key: list[list[Token]] | None  # the subscript's expressions; None for a scalar map
    operator: str  # "=", "+=", "++", ... (prefix `++@x` too)
    rhs: list[Token]  # the first two tokens after `=` (an aggregation's name and `(`)


def _writes(script: str) -> list[_Write]:
    """Each write to a map in the script, in order: `@m[k] = rhs`, `@m op= x`, `@m++`, `--@m`."""
    found: list[_Write] = []
    for probe in parse(script).probes:
        tokens = probe.tokens
        for i, token in enumerate(tokens):
            if token.kind is not Kind.map:
                continue
            j, key = i + 1, None
            if j < len(tokens) and tokens[j].text == "[":
                key = _call_arguments(tokens, j)
                depth = 0
                while j < len(tokens):
                    depth += {"[": 1, "]": -1}.get(tokens[j].text, 0)
                    j += 1
                    if depth == 0:
                        break
            after = tokens[j].text if j < len(tokens) else ""
            before = tokens[i - 1].text if i else ""
            if after in _ASSIGNS or after in _STEPS:
                rhs = list(tokens[j + 1 : j + 3]) if after == "=" else []
                found.append(_Write(token, key, after, rhs))
            elif before in _STEPS:
                found.append(_Write(token, key, before, []))
    return found


def map_functions(script: str) -> dict[str, str]:
    """Each written map (`@`, `@name`) → what fills it: an aggregation's name ("count",
    "hist", ...), "sum" for `++`, `--`, `+=` and `-=` (they add up like sum()), or "value" for
    any other assignment. The first write of a map names it."""
    functions: dict[str, str] = {}
    for write in _writes(script):
        function = "sum" if write.operator in _SUMS else "value"
        rhs = write.rhs
        if len(rhs) == 2 and rhs[0].text in AGGREGATIONS and rhs[1].text == "(":
            function = rhs[0].text
        functions.setdefault(write.map.text, function)
    return functions


def key_kinds(script: str) -> dict[str, list[KeyKind]]:
    """Each keyed map → the kind of each of its key's expressions (first write wins):
    `@[comm, pid]` → ["str", "int"], `@[kstack]` → ["stack"]; "any" where it cannot tell."""
    found: dict[str, list[KeyKind]] = {}
    for write in _writes(script):
        if write.key is not None and write.map.text not in found:
            found[write.map.text] = [_key_kind(arg) for arg in write.key]
    return found


def _key_kind(arg: list[Token]) -> KeyKind:
    if not arg:
        return "any"
    first = arg[0]
    if first.kind is Kind.ident and first.text in _STACKS:
        return "stack"
    if len(arg) == 1:
        if first.kind is Kind.number or first.text in _INT_BUILTINS:
            return "int"
        if first.kind is Kind.string or first.text in _STR_BUILTINS:
            return "str"
    if len(arg) > 2 and first.text in _STR_CALLS and arg[1].text == "(" and arg[-1].text == ")":
        return "str"
    return "any"


def lhist_args(script: str) -> dict[str, tuple[int, int, int]]:
    """Each lhist() map whose min, max and step are integer literals → (min, max, step)."""
    found: dict[str, tuple[int, int, int]] = {}
    for probe in parse(script).probes:
        tokens = probe.tokens
        for i, token in enumerate(tokens):
            if token.kind is not Kind.ident or token.text != "lhist" or i < 2:
                continue
            if tokens[i - 1].text != "=" or i + 1 >= len(tokens) or tokens[i + 1].text != "(":
                continue
            args = _call_arguments(tokens, i + 1)
            map_name = _assigned_map(tokens, i - 1)
            literals = [_literal(arg) for arg in args[1:]]
            if map_name is None or len(args) != 4 or None in literals:
                continue
            low, high, step = (int(v) for v in literals if v is not None)
            found.setdefault(map_name, (low, high, step))
    return found


def _call_arguments(tokens: tuple[Token, ...], open_paren: int) -> list[list[Token]]:
    args: list[list[Token]] = [[]]
    depth = 0
    for token in tokens[open_paren:]:
        if token.text in ("(", "[", "{"):
            depth += 1
            if depth == 1:
                continue
        elif token.text in (")", "]", "}"):
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and token.text == ",":
            args.append([])
        else:
            args[-1].append(token)
    return args


def _assigned_map(tokens: tuple[Token, ...], equals: int) -> str | None:
    """The map on the left of the `=` at index equals (`@m = ...`, `@m[k] = ...`)."""
    i = equals - 1
    depth = 0
    while i >= 0:
        text = tokens[i].text
        if text == "]":
            depth += 1
        elif text == "[":
            depth -= 1
        elif depth == 0:
            return text if tokens[i].kind is Kind.map else None
        i -= 1
    return None


def _literal(arg: list[Token]) -> int | None:
    text = "".join(t.text for t in arg)
    if not _INT.fullmatch(text):
        return None
    return int(text, 16 if "x" in text.lower() else 10)
