"""tcp_retransmits: who retransmits to whom, by address pair, port pair and TCP state."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.programs.decode import Row, addr, table_map, value
from node_agent.programs.spec import Param, ProgramSpec
from node_agent.protocol import KeyField, KeyValue

# include/net/tcp_states.h; the numbers are kernel ABI (also in the tracepoint's print format).
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}


def state_name(state: int) -> str:
    return TCP_STATES.get(state, f"state_{state}")


def _defines(params: Mapping[str, Any]) -> dict[str, str | int]:
    return {"FT_PORT": int(params["port"])}


FIELDS = [
    KeyField(name="saddr", type="addr"),
    KeyField(name="sport", type="port"),
    KeyField(name="daddr", type="addr"),
    KeyField(name="dport", type="port"),
    KeyField(name="state"),
]


def _row(key: Any, count: Any) -> Row:
    family = int(key.family)
    keys: list[KeyValue] = [
        addr(family, key.saddr),
        int(key.sport),
        addr(family, key.daddr),
        int(key.dport),
        state_name(int(key.state)),
    ]
    return keys, [value(count)]


SPEC = ProgramSpec(
    name="tcp_retransmits",
    summary="TCP retransmissions by local and remote address, port and connection state",
    output="counter_table",
    source_path=Path(__file__).with_name("program.c"),
    decode=table_map("retransmits", lambda ctx: FIELDS, lambda ctx: _row),
    defines=_defines,
    tracepoints=("tcp:tcp_retransmit_skb",),
    params=(
        Param(
            "port",
            "int",
            0,
            "count only retransmits whose local or remote port is this one (0: any)",
            minimum=0,
            maximum=65535,
        ),
    ),
    scopes=frozenset(),
    scope_note=(
        "retransmits run from timers and softirqs, where the current task is not the"
        " socket's owner; filter with the port parameter instead"
    ),
)
