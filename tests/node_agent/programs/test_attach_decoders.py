"""tcpconnlat's and vfs_latency's decoders on hand-made map entries (no bcc): a latency map
read as a table of calls and total µs plus one histogram per label set, with the host's
hostile text (process and file system names) bounded and shown escaped."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace as Key
from typing import Any

from node_agent.programs import get_program
from node_agent.programs.spec import DecodeContext
from node_agent.protocol import CounterTable, Limits, Log2Histogram
from node_agent.render import result_lines
from node_agent.safe_text import printable_lines

V6 = ipaddress.IPv6Address("2001:db8::7").packed
V4 = bytes([10, 0, 0, 9]) + bytes(12)
HOSTILE_COMM = b"\x1b[2Jx\xff\xfe\n;evil!!"  # 16 bytes, no NUL: bounded by the C array


class FakeProgram:
    def __init__(self, entries: list[tuple[Any, Any]]) -> None:
        self.entries = entries

    def items(self, table: str) -> list[tuple[Any, Any]]:
        assert table == "latency"
        return self.entries


def _decode(program: str, entries: list[tuple[Any, Any]], max_rows: int = 100) -> list[Any]:
    spec = get_program(program)
    fake: Any = FakeProgram(entries)
    return spec.decode(DecodeContext(fake, spec.validate_params({}), Limits(max_rows=max_rows)))


def _val(count: int, total_us: int) -> Key:
    return Key(count=count, total_us=total_us)


def _conn(daddr: bytes, family: int, dport: int, slot: int, comm: bytes = b"curl\0") -> Key:
    return Key(daddr=daddr, family=family, dport=dport, tgid=42, slot=slot, comm=comm)


def test_tcpconnlat_sums_slots_per_destination_and_process() -> None:
    entries = [
        (_conn(V4, 2, 443, 10), _val(3, 3000)),
        (_conn(V4, 2, 443, 12), _val(1, 5000)),
        (_conn(V6, 10, 80, 19), _val(1, 1_000_500)),
    ]
    table, *hists = _decode("tcpconnlat", entries)
    assert isinstance(table, CounterTable) and table.name == "connects"
    assert [f.name for f in table.key_fields] == ["daddr", "dport", "pid", "comm"]
    assert table.value_fields == ["count", "total_us"]
    assert table.rows == [
        (["10.0.0.9", 443, 42, "curl"], [4, 8000]),
        (["2001:db8::7", 80, 42, "curl"], [1, 1_000_500]),
    ]
    assert all(isinstance(h, Log2Histogram) and h.unit == "usec" for h in hists)
    by_dest = {(h.labels["daddr"], h.labels["dport"]): h.buckets for h in hists}
    assert by_dest == {("10.0.0.9", 443): [(10, 3), (12, 1)], ("2001:db8::7", 80): [(19, 1)]}


def test_hostile_names_stay_bounded_and_print_escaped() -> None:
    fs = b"\x1b]0;pwn\x07fs\0"
    results = _decode("vfs_latency", [(Key(fs=fs, op=0, slot=3), _val(2, 20))])
    results += _decode("tcpconnlat", [(_conn(V4, 2, 22, 1, HOSTILE_COMM), _val(1, 2))])
    text = printable_lines("\n".join(line for r in results for line in result_lines(r)))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b" in text
    table = results[0]
    assert isinstance(table, CounterTable)
    assert table.rows[0][0] == ["\x1b]0;pwn\x07fs", "read"]  # kept as sent; escaped where shown
    assert all(
        len(str(k)) <= 16 for r in results if isinstance(r, CounterTable) for k in r.rows[0][0]
    )


def test_vfs_latency_rows_per_fs_and_op_and_an_unknown_op() -> None:
    entries = [
        (Key(fs=b"tmpfs\0", op=0, slot=2), _val(5, 25)),
        (Key(fs=b"tmpfs\0", op=1, slot=4), _val(2, 40)),
        (Key(fs=b"ext4\0", op=7, slot=1), _val(1, 2)),
        (Key(fs=b"\0", op=0, slot=1), _val(1, 1)),
    ]
    table, *hists = _decode("vfs_latency", entries, max_rows=3)
    assert table.rows == [
        (["tmpfs", "read"], [5, 25]),
        (["tmpfs", "write"], [2, 40]),
        (["?", "read"], [1, 1]),
    ]
    assert table.truncated and table.total_rows == 4
    assert len(hists) == 3 and {h.labels["op"] for h in hists} <= {"read", "write", "op_7"}
