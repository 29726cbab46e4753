"""custom: caller-supplied bcc C, with the maps to read declared in the request."""

from __future__ import annotations

import ctypes
from typing import Any

from node_agent.errors import BadRequest
from node_agent.programs.custom.source_policy import check_source
from node_agent.programs.decode import counter_table, log2_histograms, text, value
from node_agent.programs.spec import DecodeContext, ProgramSpec
from node_agent.protocol import KeyField, KeyValue, MapDecl, MapKind, Result

SLOT = "slot"
MAX_FIELD_DEPTH = 4  # nested structs in a key are flattened this deep, then shown as hex


def _is_struct(obj: Any) -> bool:
    return isinstance(obj, ctypes.Structure | ctypes.Union)


def _field_value(raw: Any) -> tuple[KeyValue, str]:
    """A key field as a wire value and its KeyField type."""
    if isinstance(raw, ctypes._SimpleCData):  # a scalar key arrives as a ctypes object
        raw = raw.value
    if isinstance(raw, bytes):  # ctypes hands char arrays over as bytes
        return text(raw), "str"
    if isinstance(raw, bool | int):
        return int(raw), "int"
    if isinstance(raw, ctypes.Array | ctypes.Structure | ctypes.Union):
        return bytes(raw).hex(), "str"
    return str(raw), "str"


def _key_fields(key: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, KeyValue, str]]:
    """(name, value, type) of each field of a key; a scalar key is one field named "key"."""
    if not _is_struct(key):
        val, kind = _field_value(key)
        return [(prefix or "key", val, kind)]
    out: list[tuple[str, KeyValue, str]] = []
    for spec in key._fields_:
        name = spec[0]
        if name.startswith("__pad"):  # bcc's padding between fields
            continue
        raw = getattr(key, name)
        full = f"{prefix}{name}"
        if _is_struct(raw) and depth < MAX_FIELD_DEPTH:
            out.extend(_key_fields(raw, f"{full}.", depth + 1))
        else:
            val, kind = _field_value(raw)
            out.append((full, val, kind))
    return out


def _items(ctx: DecodeContext, decl: MapDecl) -> list[tuple[Any, Any]]:
    try:
        return ctx.program.items(decl.name)
    except KeyError:
        raise BadRequest(
            f"maps: the program has no map named {decl.name!r} (declared in 'maps')"
        ) from None


def _int_value(decl: MapDecl, raw: Any) -> int:
    try:
        return value(raw)
    except (TypeError, ValueError):
        raise BadRequest(
            f"maps: map {decl.name!r} has values of type {type(raw).__name__}; "
            "counter and log2_hist maps need integer values"
        ) from None


def _counter(ctx: DecodeContext, decl: MapDecl) -> Result:
    names: list[str] = []
    types: list[str] = []
    rows: list[tuple[list[KeyValue], list[int]]] = []
    for key, raw in _items(ctx, decl):
        count = _int_value(decl, raw)
        if count == 0:  # array maps list every slot, used or not
            continue
        fields = _key_fields(key)
        if not names:
            names = [f[0] for f in fields]
            types = [f[2] for f in fields]
        rows.append(([f[1] for f in fields], [count]))
    key_fields = [
        KeyField(name=n, type="int" if t == "int" else "str")
        for n, t in zip(names, types, strict=True)
    ]
    return counter_table(decl.name, key_fields, rows, max_rows=ctx.limits.max_rows)


def _histograms(ctx: DecodeContext, decl: MapDecl) -> list[Result]:
    entries: list[tuple[dict[str, KeyValue], int]] = []
    for key, raw in _items(ctx, decl):
        fields = {name: val for name, val, _ in _key_fields(key)}
        if _is_struct(key):
            if SLOT not in fields or not isinstance(fields[SLOT], int):
                raise BadRequest(
                    f"maps: log2_hist map {decl.name!r} has a struct key without an integer "
                    f"field named {SLOT!r}"
                )
        else:
            fields = {SLOT: fields["key"]}
        entries.append((fields, _int_value(decl, raw)))
    hists = log2_histograms(
        decl.name,
        decl.unit,
        entries,
        labels_of=lambda f: {k: v for k, v in f.items() if k != SLOT},
        slot_of=lambda f: int(f[SLOT]),
        max_histograms=ctx.limits.max_rows,
    )
    return list(hists)


def _decode(ctx: DecodeContext) -> list[Result]:
    results: list[Result] = []
    for decl in ctx.maps:
        if decl.kind is MapKind.counter:
            results.append(_counter(ctx, decl))
        else:
            results.extend(_histograms(ctx, decl))
    return results


SPEC = ProgramSpec(
    name="custom",
    summary="caller-supplied bcc C; reads the counter and log2_hist maps the request declares",
    output="counter_table",
    source_path=None,
    decode=_decode,
    features=frozenset(),
    scope_note="custom code must call ft_in_scope() itself for a scope to apply",
    source_policy=check_source,
)
