"""node_agent.btf against bpftool reading the same kernel BTF, and on small blobs made here
for what the kernel's does not show on demand (bitfields, broken blobs)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from node_agent import btf
from node_agent.errors import UnsupportedProgram
from node_agent.headers.probe import Headers, layout_defines, layout_problem
from node_agent.programs import catalog
from node_agent.protocol import HeadersState

VMLINUX = btf.BTF_VMLINUX
needs_btf = pytest.mark.skipif(not VMLINUX.exists(), reason=f"this kernel has no {VMLINUX}")


@cache
def _bpftool_types() -> dict[int, dict[str, Any]]:
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run(
        [tool, "-j", "btf", "dump", "file", str(VMLINUX)],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def _bpftool_offset(path: str) -> int:
    """The same walk by bpftool's reading: named members, through anonymous ones."""
    types = _bpftool_types()
    name, *members = path.split(".")
    (current,) = [t for t in types.values() if t["kind"] == "STRUCT" and t["name"] == name][:1]
    total = 0

    def find(t: dict[str, Any], wanted: str) -> tuple[int, dict[str, Any]] | None:
        for m in t.get("members", []):
            if m["name"] == wanted:
                return m["bits_offset"], types[m["type_id"]]
        for m in t.get("members", []):
            inner = _strip(types[m["type_id"]])
            if m["name"] == "(anon)" and inner["kind"] in ("STRUCT", "UNION"):
                found = find(inner, wanted)
                if found is not None:
                    return m["bits_offset"] + found[0], found[1]
        return None

    for member in members:
        found = find(_strip(current), member)
        assert found is not None, f"bpftool: {path} has no {member}"
        total += found[0]
        current = found[1]
    assert total % 8 == 0
    return total // 8


def _strip(t: dict[str, Any]) -> dict[str, Any]:
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        t = _bpftool_types()[t["type_id"]]
    return t


def _catalog_fields() -> dict[str, str]:
    fields: dict[str, str] = {}
    for spec in catalog().values():
        for option in spec.attach:
            fields.update(option.fields)
    return fields


@needs_btf
def test_every_plain_member_of_every_struct_is_where_bpftool_says() -> None:
    parsed = btf.load(VMLINUX)
    seen: dict[str, int] = {}
    for t in _bpftool_types().values():
        if t["kind"] == "STRUCT" and t["name"] != "(anon)":
            seen[t["name"]] = seen.get(t["name"], 0) + 1
    checked = 0
    for t in _bpftool_types().values():
        if t["kind"] != "STRUCT" or seen.get(t["name"]) != 1:
            continue
        for m in t["members"]:
            if m["name"] == "(anon)" or "bitfield_size" in m or m["bits_offset"] % 8:
                continue
            assert parsed.offset(f"{t['name']}.{m['name']}") == m["bits_offset"] // 8, m
            checked += 1
    assert checked > 10_000, checked  # a whole kernel's structs, not a handful


@needs_btf
def test_what_the_catalog_reads_is_placed_as_bpftool_places_it() -> None:
    fields = _catalog_fields()
    assert set(fields.values()) >= {"file.f_inode", "sock.__sk_common.skc_dport"}
    placed = btf.offsets(fields, VMLINUX)
    assert placed == {define: _bpftool_offset(path) for define, path in fields.items()}


@needs_btf
def test_what_btf_cannot_place_is_said() -> None:
    parsed = btf.load(VMLINUX)
    with pytest.raises(btf.BtfError, match="has no struct no_such_struct"):
        parsed.offset("no_such_struct.x")
    with pytest.raises(btf.BtfError, match="struct file has no member f_no_such"):
        parsed.offset("file.f_no_such")
    with pytest.raises(btf.BtfError, match="names no member"):
        parsed.offset("file")
    with pytest.raises(btf.BtfError, match=r"sock_common\.skc_reuse is a bitfield"):
        parsed.offset("sock_common.skc_reuse")
    with pytest.raises(btf.BtfError, match=r"f_inode is not a struct or union"):
        parsed.offset("file.f_inode.i_sb")  # a pointer: a second read, not an offset


def _blob(types: bytes, strings: bytes, magic: int = btf.MAGIC) -> bytes:
    header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_a_small_blob_with_a_typedef_an_anonymous_union_and_a_bitfield() -> None:
    strings = b"\0outer\0inner_t\0flag\0count\0x\0"
    at = {s: strings.index(s.encode() + b"\0") for s in ("outer", "inner_t", "flag", "count", "x")}
    info = lambda kind, vlen, kflag=0: (kflag << 31) | (kind << 24) | vlen  # noqa: E731
    types = b"".join(
        [
            struct.pack("<III", 0, info(1, 0), 4) + struct.pack("<I", 32),  # 1: int
            # 2: union { int x; } (anonymous)
            struct.pack("<III", 0, info(5, 1), 4) + struct.pack("<III", at["x"], 1, 0),
            struct.pack("<III", at["inner_t"], info(8, 0), 2),  # 3: typedef inner_t -> 2
            # 4: struct outer { int flag:3; int count; inner_t; } with bitfield offsets
            struct.pack("<III", at["outer"], info(4, 3, kflag=1), 12)
            + struct.pack("<III", at["flag"], 1, (3 << 24) | 0)
            + struct.pack("<III", at["count"], 1, 32)
            + struct.pack("<III", 0, 3, 64),
        ]
    )
    parsed = btf.Btf(_blob(types, strings), "test blob")
    assert parsed.offset("outer.count") == 4
    assert parsed.offset("outer.x") == 8  # through the typedef'd anonymous union
    with pytest.raises(btf.BtfError, match=r"outer\.flag is a bitfield"):
        parsed.offset("outer.flag")
    with pytest.raises(btf.BtfError, match="not BTF"):
        btf.Btf(_blob(types, strings, magic=0x1234), "junk")
    with pytest.raises(btf.BtfError, match="run past"):
        btf.Btf(_blob(types, strings)[:-8], "cut short")
    with pytest.raises(btf.BtfError, match="too short"):
        btf.Btf(b"\x9f\xeb", "two bytes")
    with pytest.raises(btf.BtfError, match="unknown kind 31"):
        btf.Btf(_blob(struct.pack("<III", 0, info(31, 0), 0), b"\0"), "odd kind")


APPROXIMATE = Headers(
    HeadersState.approximate,
    "/usr/src/linux-headers-6.1.0-57-amd64 is for 6.1.0-57-amd64, not 6.12.0;"
    " exact ones: apt-get install linux-headers-6.12.0",
    "6.12.0",
)


@needs_btf
def test_approximate_headers_get_the_kernels_offsets_and_exact_ones_their_own() -> None:
    fields = catalog()["vfs_latency"].attach[1].fields
    placed = btf.offsets(dict(fields), VMLINUX)
    assert layout_defines(APPROXIMATE, dict(fields)) == [f"-D{d}={o}" for d, o in placed.items()]
    exact = Headers(HeadersState.exact, "linked", "6.12.0")
    assert layout_defines(exact, dict(fields)) == []  # the headers' own offsetof
    assert layout_defines(APPROXIMATE, {}) == []


def test_approximate_headers_without_btf_name_the_members_and_the_fix(tmp_path: Path) -> None:
    fields = dict(catalog()["vfs_latency"].attach[1].fields)
    missing = tmp_path / "vmlinux"
    said = layout_problem(APPROXIMATE, fields, missing)
    assert said is not None
    assert "file.f_inode" in said and str(missing) in said and "linux-headers-6.12.0" in said
    with pytest.raises(UnsupportedProgram, match=r"the program reads file\.f_inode"):
        layout_defines(APPROXIMATE, fields, missing)
