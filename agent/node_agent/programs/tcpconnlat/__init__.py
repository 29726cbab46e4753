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

from node_agent.programs.decode import addr, latency_map, text
from node_agent.programs.spec import AttachOption, ProgramSpec
from node_agent.protocol import KeyField, KeyValue

FUNCTIONS = ("tcp_v4_connect", "tcp_v6_connect", "tcp_rcv_state_process")
# What the function options read of struct sock at the SYN-ACK (the tracepoint has them as
# its own fields), and where.
FIELDS_READ = {
    "FT_OFF_SK_STATE": "sock.__sk_common.skc_state",
    "FT_OFF_SK_FAMILY": "sock.__sk_common.skc_family",
    "FT_OFF_SK_DPORT": "sock.__sk_common.skc_dport",
    "FT_OFF_SK_DADDR": "sock.__sk_common.skc_daddr",
    "FT_OFF_SK_V6_DADDR": "sock.__sk_common.skc_v6_daddr",
}
ATTACH = (
    AttachOption.tracepoint("sock:inet_sock_set_state"),
    AttachOption.on_functions("fentry", *FUNCTIONS, fields=FIELDS_READ),
    AttachOption.on_functions("kprobe", *FUNCTIONS, fields=FIELDS_READ),
)

FIELDS = [
    KeyField(name="daddr", type="addr"),
    KeyField(name="dport", type="port"),
    KeyField(name="pid", type="int"),
    KeyField(name="comm"),
]


def _keys(key: Any) -> list[KeyValue]:
    return [addr(int(key.family), key.daddr), int(key.dport), int(key.tgid), text(key.comm)]


def _labels(key: Any) -> dict[str, KeyValue]:
    return {"daddr": addr(int(key.family), key.daddr), "dport": int(key.dport)}


SPEC = ProgramSpec(
    name="tcpconnlat",
    summary="TCP connect latency (SYN to ESTABLISHED) per destination and process",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=latency_map(
        "latency",
        table="connects",
        fields=FIELDS,
        keys=_keys,
        histogram="connect_latency",
        labels=_labels,
    ),
    features=frozenset(),
    attach=ATTACH,
    scope_note="scope and process are taken at connect(), where the caller is current",
)
