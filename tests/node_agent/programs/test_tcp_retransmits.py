"""tcp_retransmits against real retransmissions, made on loopback inside a private netns.

A listener's accept queue is filled and never drained, so the next client's SYN is dropped
by the kernel and retransmitted after the initial 1 s RTO: a known retransmit on a known
port pair in state SYN_SENT, with no packet-dropping tool needed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from node_agent.errors import BadParameter
from node_agent.protocol import Scope, TraceRequest
from node_agent.trace import prepare
from tests.helpers import row_value, run_trace

pytestmark = pytest.mark.bcc

SERVER_PORT = 47001
CLIENT_PORT = 47002

# argv: family (4|6). Backlog 1 takes two completed connections; the third SYN is dropped.
SYN_DROP = f"""
import socket, sys, time
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host = "::1" if sys.argv[1] == "6" else "127.0.0.1"
server = socket.socket(family, socket.SOCK_STREAM)
server.bind((host, {SERVER_PORT}))
server.listen(1)
fillers = [socket.create_connection((host, {SERVER_PORT})) for _ in range(2)]
time.sleep(0.2)
client = socket.socket(family, socket.SOCK_STREAM)
client.bind((host, {CLIENT_PORT}))
client.setblocking(False)
client.connect_ex((host, {SERVER_PORT}))
time.sleep(1.6)
"""


def _syn_drop(netns: str, family: str) -> None:
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", SYN_DROP, family]
    subprocess.run(cmd, check=True, timeout=30)


def _retrans_segs(netns: str) -> int:
    """The namespace's own count of retransmitted TCP segments (Tcp: RetransSegs)."""
    cmd = ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"]
    lines = [
        line.split()
        for line in subprocess.run(
            cmd, check=True, capture_output=True, text=True
        ).stdout.splitlines()
        if line.startswith("Tcp:")
    ]
    names, values = lines
    return int(values[names.index("RetransSegs")])


@pytest.mark.parametrize(("family", "host"), [("4", "127.0.0.1"), ("6", "::1")])
def test_dropped_syn_is_counted_for_its_port_pair(netns: str, family: str, host: str) -> None:
    request = TraceRequest(
        run_id=f"retrans-{family}",
        program="tcp_retransmits",
        duration_s=3,
        params={"port": SERVER_PORT},
    )
    outcome = run_trace(request, lambda: _syn_drop(netns, family))
    assert outcome.final.state.value == "succeeded", outcome.final
    table = outcome.table("retransmits")
    assert [f.name for f in table.key_fields] == ["saddr", "sport", "daddr", "dport", "state"]
    mine = dict(saddr=host, sport=CLIENT_PORT, daddr=host, dport=SERVER_PORT, state="SYN_SENT")
    # The namespace holds only this workload: the kernel's own counter is the known answer.
    expected = _retrans_segs(netns)
    assert expected >= 1
    assert row_value(table, **mine) == expected
    # The port filter keeps only rows with the server port on either side.
    assert all(SERVER_PORT in (keys[1], keys[3]) for keys, _ in table.rows)


def test_port_filter_excludes_other_ports(netns: str) -> None:
    request = TraceRequest(
        run_id="retrans-other",
        program="tcp_retransmits",
        duration_s=3,
        params={"port": SERVER_PORT + 100},
    )
    table = run_trace(request, lambda: _syn_drop(netns, "4")).table("retransmits")
    assert _retrans_segs(netns) >= 1  # the retransmits happened, and were filtered out
    assert row_value(table, sport=CLIENT_PORT, dport=SERVER_PORT) == 0


def test_process_scopes_are_refused() -> None:
    request = TraceRequest(
        run_id="retrans-scope", program="tcp_retransmits", duration_s=1, scope=Scope(pid=1)
    )
    with pytest.raises(BadParameter, match="softirq"):
        prepare(request)
