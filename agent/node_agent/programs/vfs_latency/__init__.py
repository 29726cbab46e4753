"""vfs_latency: vfs_read / vfs_write latency per file system type.

Output (the shapes other code relies on):
- counter table `vfs_ops`: keys fs, op (read|write); values count, total_us.
- log2 histograms `vfs_latency` (unit usec), one per file system and op: labels fs, op.
Attach options, cheapest first: fentry/fexit, kprobe/kretprobe on vfs_read and vfs_write;
there is no tracepoint for them, so a kernel with neither (6.18 here) reports both reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node_agent.programs.decode import latency_map, text
from node_agent.programs.spec import AttachOption, ProgramSpec
from node_agent.protocol import KeyField, KeyValue

FUNCTIONS = ("vfs_read", "vfs_write")
OPS = ("read", "write")
ATTACH = (
    AttachOption.on_functions("fentry", *FUNCTIONS),
    AttachOption.on_functions("kprobe", *FUNCTIONS),
)

FIELDS = [KeyField(name="fs"), KeyField(name="op")]


def _op(raw: Any) -> str:
    op = int(raw)
    return OPS[op] if 0 <= op < len(OPS) else f"op_{op}"


def _keys(key: Any) -> list[KeyValue]:
    return [text(key.fs) or "?", _op(key.op)]


SPEC = ProgramSpec(
    name="vfs_latency",
    summary="read/write latency (vfs_read, vfs_write) per file system type",
    output="log2_histogram",
    source_path=Path(__file__).with_name("program.c"),
    decode=latency_map(
        "latency",
        table="vfs_ops",
        fields=FIELDS,
        keys=_keys,
        histogram="vfs_latency",
        labels=lambda key: dict(zip(("fs", "op"), _keys(key), strict=True)),
    ),
    features=frozenset(),
    attach=ATTACH,
    scope_note="scope is checked when the call starts, where the caller is current",
)
