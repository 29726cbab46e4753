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

from node_agent.programs.decode import Row, log2_histograms, table_map, text
from node_agent.programs.spec import AttachOption, DecodeContext, ProgramSpec
from node_agent.protocol import Feature, KeyField, KeyValue, Result

FUNCTIONS = ("vfs_read", "vfs_write")
OPS = ("read", "write")
ATTACH = (
    AttachOption(
        "fentry",
        "fentry:vfs_read,vfs_write",
        frozenset({Feature.fentry, Feature.btf}),
        functions=FUNCTIONS,
    ),
    AttachOption(
        "kprobe", "kprobe:vfs_read,vfs_write", frozenset({Feature.kprobes}), functions=FUNCTIONS
    ),
)

FIELDS = [KeyField(name="fs"), KeyField(name="op")]


def _op(raw: Any) -> str:
    op = int(raw)
    return OPS[op] if 0 <= op < len(OPS) else f"op_{op}"


def _row(key: Any, val: Any) -> Row:
    keys: list[KeyValue] = [text(key.fs) or "?", _op(key.op)]
    return keys, [int(val.count), int(val.total_us)]


_table = table_map(
    "vfs_ops", lambda ctx: FIELDS, lambda ctx: _row, value_fields=("count", "total_us")
)


def _decode(ctx: DecodeContext) -> list[Result]:
    hists = log2_histograms(
        "vfs_latency",
        "usec",
        ctx.program.items("latency"),
        lambda key: {"fs": text(key.fs) or "?", "op": _op(key.op)},
        max_histograms=ctx.limits.max_rows,
    )
    return [*_table(ctx), *hists]


SPEC = ProgramSpec(
    name="vfs_latency",
    summary="read/write latency (vfs_read, vfs_write) per file system type",
    output="log2_histogram",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    features=frozenset(),
    attach=ATTACH,
    scope_note="scope is checked when the call starts, where the caller is current",
)
