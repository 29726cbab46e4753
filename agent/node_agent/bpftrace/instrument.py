"""A checked script made ready to run: the trace's scope joined to every probe's predicate,
and an interval probe that prints every map between two markers (cumulative snapshots).

Nothing is inserted across lines, so bpftrace's error line numbers are the user's lines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from node_agent.bpftrace.script import map_functions, read_script
from node_agent.bpftrace.syntax import Kind, Probe
from node_agent.errors import BadParameter, PolicyViolation
from node_agent.protocol import Scope
from node_agent.scope import comm_bytes, resolve_cgroup

log = logging.getLogger(__name__)

BTF = Path("/sys/kernel/btf/vmlinux")
# Not scoped: BEGIN and END run in bpftrace's own process, interval probes on a timer tick.
UNSCOPED = ("BEGIN", "END", "interval:", "i:")
# The current task's identity and memory: in an interval probe, a task outside the scope.
TASK_BUILTINS = frozenset(
    {"pid", "tid", "uid", "gid", "comm", "curtask", "cgroup", "username"}
    | {"kstack", "ustack", "reg", "uptr", "usym", "uaddr"}
)
MAX_CGROUP_IDS = 512  # groups in a scope without BTF (ids listed in the predicate)
_COMM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.-:+/")


def bpftrace_string(value: str) -> str:
    """A bpftrace string literal for any text: every byte not plainly safe as `\\xNN`."""
    raw = value.encode()
    return '"' + "".join(chr(b) if b in _COMM_SAFE else f"\\x{b:02x}" for b in raw) + '"'


def _ancestor_is(level: int, cgroup_id: int) -> str:
    """The current task's cgroup is the group (id, level) or below it: the kernel's own
    bpf_get_current_ancestor_cgroup_id(level) == id, read through BTF (bpftrace 0.17 has no
    such builtin; its `cgroup` is the task's own group only)."""
    cgrp = "curtask->cgroups->dfl_cgrp"
    ancestor = f"(struct cgroup *)((uint64 *){cgrp}->ancestors)[{level}]"
    return (
        f"({cgrp}->level >= {level}"
        f" && ((struct kernfs_node *)(({ancestor})->kn))->id == {cgroup_id})"
    )


def _group_and_descendants(group: Path) -> str:
    """Without BTF: the group's id and its descendants' ids as they are now (bounded)."""
    ids = []
    for root, dirs, _ in os.walk(group):
        ids.append(os.stat(root).st_ino)
        if len(ids) > MAX_CGROUP_IDS:
            raise BadParameter(
                "scope.cgroup",
                f"more than {MAX_CGROUP_IDS} groups below {group} (no kernel BTF here to"
                " test ancestry in the kernel)",
            )
        dirs.sort()
    log.warning("no kernel BTF: cgroup scope lists %d group ids; new groups are not seen", len(ids))
    return "(" + " || ".join(f"cgroup == {i}" for i in ids) + ")"


def scope_predicate(scope: Scope, cgroup_base: str | None, *, btf: Path = BTF) -> str | None:
    """The bpftrace predicate that keeps only the scope's tasks; None for the whole host."""
    parts: list[str] = []
    if scope.pid is not None:
        parts.append(f"pid == {int(scope.pid)}")
    if scope.comm is not None:
        comm_bytes(scope.comm)  # the bcc prelude's bound, the same refusal
        parts.append(f"comm == {bpftrace_string(scope.comm)}")
    if scope.cgroup is not None or cgroup_base is not None:
        group, cgroup_id, level = resolve_cgroup(scope.cgroup, cgroup_base)
        if level > 0:  # the hierarchy's root holds every task
            on_btf = btf.exists()
            parts.append(
                _ancestor_is(level, cgroup_id) if on_btf else _group_and_descendants(group)
            )
    return " && ".join(parts) if parts else None


def _scoped(probe: Probe) -> bool:
    return not all(a.startswith(UNSCOPED) for a in probe.attach)


def _check_timer_probe(probe: Probe) -> None:
    """An interval probe runs on whatever task its timer interrupts, in scope or not: with a
    scope, it may not look at that task (the scope's predicate would not hold there)."""
    if not any(a.startswith(("interval:", "i:")) for a in probe.attach):
        return
    for i, token in enumerate(probe.tokens):
        if token.kind is Kind.ident and token.text in TASK_BUILTINS:
            if i and probe.tokens[i - 1].text in (".", "->"):
                continue
            raise PolicyViolation(
                f"line {token.line}: {token.text} in an interval probe is the task its timer"
                " interrupts, in the scope or not (a scoped trace samples with profile:hz:N)"
            )


def instrument(
    script: str, *, scope_predicate: str | None, interval_s: float | None, marker: str
) -> str:
    """The script with the scope joined to each probe's own predicate (same lines), BEGIN
    printing `marker attached`, and when interval_s is set an appended probe printing every
    map between `marker begin` and `marker end` lines."""
    parsed = read_script(script)
    edits: list[tuple[int, str]] = []  # (offset, text to insert there), applied back to front
    # BEGIN runs once every probe is attached (bpftrace's own "attached_probes" comes before
    # the programs even load): it says when the trace is really running.
    attached = f'printf("{marker} attached\\n");'
    begin = [p for p in parsed.probes if p.attach == ("BEGIN",)]
    if begin:
        edits.append((begin[0].body[0] + 1, f" {attached}"))
    if scope_predicate is not None:
        for probe in parsed.probes:
            if not _scoped(probe):
                _check_timer_probe(probe)
                continue
            if probe.predicate is None:
                body = probe.body[0]
                # `kprobe:f/x/` would read as one path: a space before the predicate
                space = "" if script[body - 1].isspace() else " "
                edits.append((body, f"{space}/{scope_predicate}/ "))
            else:
                opening, closing = probe.predicate
                edits.append((closing, ")"))
                edits.append((opening + 1, f"({scope_predicate}) && ("))
    text = script
    for offset, insert in sorted(edits, reverse=True):
        text = text[:offset] + insert + text[offset:]
    if not begin:
        text += f"\nBEGIN {{ {attached} }}"
    if interval_s:
        ms = max(1, round(interval_s * 1000))
        prints = " ".join(f"print({name});" for name in map_functions(script))
        text += (
            f'\ninterval:ms:{ms} {{ printf("{marker} begin\\n"); {prints}'
            f' printf("{marker} end\\n"); }}\n'
        )
    return text
