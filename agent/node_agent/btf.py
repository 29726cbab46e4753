"""Where the running kernel keeps a struct's members, read from its BTF (/sys/kernel/btf/vmlinux).

A program that reads kernel structs through pointers (vfs_latency's file->f_inode->i_sb...)
gets the offsets from the headers it compiles with. Exact headers (or kheaders) are this
kernel's, so they are right. Approximate ones are another kernel's, and a struct laid out
differently there gives a plausible wrong answer: vfs_latency on Debian's 6.12 with 6.1's
headers read every file system's name as nothing (the kernel matrix's 6.12 column with
approximate headers). So with approximate headers, the offsets come from the kernel's own BTF,
which describes exactly the structs it runs with, and the program gets them as defines; with
no BTF (or a member BTF lacks) the program is unsupported, saying which.

The format (Documentation/bpf/btf.rst): a header, then type records one after another (ids
from 1), each a 12-byte `btf_type` and a kind-dependent tail; names are offsets into a string
section. Only what finding a member's byte offset needs is kept.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off and len

# Kinds (include/uapi/linux/btf.h) and the size of each one's tail after the 12-byte record:
# fixed, or per member (vlen).
_STRUCT, _UNION = 4, 5
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 8, 9, 10, 11, 18
_QUALIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
_FIXED_TAIL = {1: 4, 3: 12, 14: 4, 17: 4}  # int, array, var, decl_tag
# enum, func_proto, datasec, enum64 beside struct and union:
_MEMBER_TAIL = {_STRUCT: 12, _UNION: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_KNOWN_KINDS = set(range(1, 20))


class BtfError(Exception):
    """BTF is missing, unreadable, or lacks what was asked for; the message says which."""


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    ref: int  # a qualifier's or typedef's target; a struct's size
    members: tuple[tuple[str, int, int, int], ...] = ()  # name, type id, bit offset, bitfield size


class Btf:
    """The structs, unions and qualifiers of one BTF blob, by type id, and structs by name."""

    def __init__(self, data: bytes, source: str = "BTF") -> None:
        self.source = source
        if len(data) < _HEADER.size:
            raise BtfError(f"{source} is {len(data)} bytes: too short for a BTF header")
        order = "<" if struct.unpack_from("<H", data)[0] == MAGIC else ">"
        header = struct.Struct(order + _HEADER.format[1:])
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = header.unpack_from(
            data
        )
        if magic != MAGIC:
            raise BtfError(f"{source} is not BTF (magic {magic:#x}, not {MAGIC:#x})")
        types_at, strings_at = hdr_len + type_off, hdr_len + str_off
        if types_at + type_len > len(data) or strings_at + str_len > len(data):
            raise BtfError(f"{source}: its sections run past its {len(data)} bytes")
        self._strings = data[strings_at : strings_at + str_len]
        record = struct.Struct(order + "III")
        member = struct.Struct(order + "III")
        self.types: dict[int, _Type] = {}
        self.structs: dict[str, int] = {}
        at, end, type_id = types_at, types_at + type_len, 0
        while at < end:
            type_id += 1
            name_off, info, size_or_type = record.unpack_from(data, at)
            at += record.size
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind not in _KNOWN_KINDS:
                raise BtfError(f"{source}: type {type_id} has unknown kind {kind}")
            if kind in (_STRUCT, _UNION):
                bitfields = bool(info >> 31)
                members = []
                for _ in range(vlen):
                    m_name, m_type, m_offset = member.unpack_from(data, at)
                    at += member.size
                    size = 0
                    if bitfields:  # the top 8 bits are a bitfield's size, 0 for a plain member
                        size, m_offset = m_offset >> 24, m_offset & 0xFFFFFF
                    members.append((self._name(m_name), m_type, m_offset, size))
                name = self._name(name_off)
                self.types[type_id] = _Type(kind, name, size_or_type, tuple(members))
                if kind == _STRUCT and name:
                    self.structs.setdefault(name, type_id)
                continue
            if kind in _QUALIFIERS:
                self.types[type_id] = _Type(kind, "", size_or_type)
            at += _FIXED_TAIL.get(kind, 0) + _MEMBER_TAIL.get(kind, 0) * vlen

    def _name(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset : end if end >= 0 else None].decode("ascii", "replace")

    def offset(self, path: str) -> int:
        """The byte offset of `struct.member[.member...]`, through anonymous members."""
        struct_name, *members = path.split(".")
        if not members:
            raise BtfError(f"{path!r} names no member (struct.member)")
        type_id = self.structs.get(struct_name)
        if type_id is None:
            raise BtfError(f"{self.source} has no struct {struct_name}")
        total, where = 0, f"struct {struct_name}"
        for name in members:
            container = self._resolve(type_id)
            if container is None:
                raise BtfError(f"{where} is not a struct or union, so it has no {name}")
            found = self._member(container, name)
            if found is None:
                raise BtfError(f"{self.source}: {where} has no member {name}")
            bits, type_id, size = found
            if size or bits % 8:
                raise BtfError(f"{where}.{name} is a bitfield (bit {bits}), not a byte offset")
            total += bits // 8
            where = f"{where}.{name}"
        return total

    def _resolve(self, type_id: int) -> _Type | None:
        """The struct or union behind typedefs and qualifiers, if that is what it is."""
        for _ in range(32):  # qualifier chains are short; a loop is a broken blob
            found = self.types.get(type_id)
            if found is None:
                return None
            if found.kind in (_STRUCT, _UNION):
                return found
            type_id = found.ref
        return None

    def _member(self, container: _Type, name: str, depth: int = 0) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield size) of a member, looking inside anonymous structs
        and unions."""
        for m_name, m_type, m_bits, m_size in container.members:
            if m_name == name:
                return m_bits, m_type, m_size
        if depth < 8:
            for m_name, m_type, m_bits, _ in container.members:
                inner = self._resolve(m_type) if not m_name else None
                found = self._member(inner, name, depth + 1) if inner is not None else None
                if found is not None:
                    return m_bits + found[0], found[1], found[2]
        return None


@functools.lru_cache(maxsize=4)
def load(path: Path = BTF_VMLINUX) -> Btf:
    """The kernel's BTF, parsed once per process (a trace child parses it at most once)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        why = f"{path}: {exc.strerror}"
        raise BtfError(f"there is no kernel BTF to read struct layouts from ({why})") from exc
    return Btf(data, str(path))


def offsets(fields: Mapping[str, str], path: Path = BTF_VMLINUX) -> dict[str, int]:
    """Each define's offset (`{"FT_OFF_FILE_INODE": "file.f_inode"}` -> {...: 40})."""
    btf = load(path)
    return {define: btf.offset(member) for define, member in fields.items()}
