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
# What the C reads, file->f_inode->i_sb->s_type->name (each a pointer), and where.
FIELDS_READ = {
    "FT_OFF_FILE_INODE": "file.f_inode",
    "FT_OFF_INODE_SB": "inode.i_sb",
    "FT_OFF_SB_TYPE": "super_block.s_type",
    "FT_OFF_FSTYPE_NAME": "file_system_type.name",
}
ATTACH = (
    AttachOption.on_functions("fentry", *FUNCTIONS, fields=FIELDS_READ),
    AttachOption.on_functions("kprobe", *FUNCTIONS, fields=FIELDS_READ),
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
