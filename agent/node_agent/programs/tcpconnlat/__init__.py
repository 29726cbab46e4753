"""tcpconnlat: TCP connect latency (SYN sent to ESTABLISHED) per destination and process.

Output (the shapes other code relies on):
- counter table `connects`: keys daddr (addr), dport (port), pid, comm; values count,
  total_us (sum of latencies; total_us / count is the mean).
- log2 histograms `connect_latency` (unit usec), one per destination: labels daddr, dport.
Attach options, cheapest first: tracepoint sock:inet_sock_set_state, fentry, kprobe
(tcp_v4_connect / tcp_v6_connect + tcp_rcv_state_process); the `attach` param forces one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node_agent.programs.decode import Row, addr, log2_histograms, table_map, text
from node_agent.programs.spec import AttachOption, DecodeContext, ProgramSpec
from node_agent.protocol import Feature, KeyField, KeyValue, Result

FUNCTIONS = ("tcp_v4_connect", "tcp_v6_connect", "tcp_rcv_state_process")
ATTACH = (
    AttachOption(
        "tracepoint",
        "tracepoint:sock:inet_sock_set_state",
        frozenset({Feature.tracepoints}),
        tracepoints=("sock:inet_sock_set_state",),
    ),
    AttachOption(
        "fentry",
        "fentry:tcp_v4_connect,tcp_v6_connect,tcp_rcv_state_process",
        frozenset({Feature.fentry, Feature.btf}),
        functions=FUNCTIONS,
    ),
    AttachOption(
        "kprobe",
        "kprobe:tcp_v4_connect,tcp_v6_connect,tcp_rcv_state_process",
        frozenset({Feature.kprobes}),
        functions=FUNCTIONS,
    ),
)

FIELDS = [
    KeyField(name="daddr", type="addr"),
    KeyField(name="dport", type="port"),
    KeyField(name="pid", type="int"),
    KeyField(name="comm"),
]


def _row(key: Any, val: Any) -> Row:
    keys: list[KeyValue] = [
        addr(int(key.family), key.daddr),
        int(key.dport),
        int(key.tgid),
        text(key.comm),
    ]
    return keys, [int(val.count), int(val.total_us)]


_table = table_map(
    "connects", lambda ctx: FIELDS, lambda ctx: _row, value_fields=("count", "total_us")
)


def _decode(ctx: DecodeContext) -> list[Result]:
    hists = log2_histograms(
        "connect_latency",
        "usec",
        ctx.program.items("latency"),
        lambda key: {"daddr": addr(int(key.family), key.daddr), "dport": int(key.dport)},
        max_histograms=ctx.limits.max_rows,
    )
    return [*_table(ctx), *hists]


SPEC = ProgramSpec(
    name="tcpconnlat",
    summary="TCP connect latency (SYN to ESTABLISHED) per destination and process",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=_decode,
    features=frozenset(),
    attach=ATTACH,
    scope_note="scope and process are taken at connect(), where the caller is current",
)
