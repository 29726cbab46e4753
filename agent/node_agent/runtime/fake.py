"""An in-memory runtime for unit tests of the trace logic: no kernel, no root."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from node_agent.overhead import OverheadMeter, Reading
from node_agent.runtime.base import EventCallback


class FakeProgram:
    def __init__(self, tables: dict[str, list[tuple[Any, Any]]]) -> None:
        self.tables = tables
        self.stacks: dict[tuple[str, int], list[int]] = {}
        self.symbols: dict[tuple[int, int | None], str] = {}
        self.perf_attached: list[tuple[str, int]] = []
        self.pending_events: list[Any] = []
        self.lost = 0
        self.closed = False
        self._on_event: EventCallback | None = None
        self._on_lost: Callable[[int], None] | None = None

    def items(self, table: str) -> list[tuple[Any, Any]]:
        return list(self.tables.get(table, []))

    def stack(self, table: str, stack_id: int) -> list[int]:
        return list(self.stacks.get((table, stack_id), []))

    def symbolize(self, addr: int, pid: int | None) -> str:
        return self.symbols.get((addr, pid), "[unknown]")

    def open_events(
        self, table: str, on_event: EventCallback, on_lost: Callable[[int], None]
    ) -> None:
        self._on_event, self._on_lost = on_event, on_lost

    def poll_events(self, timeout_ms: int) -> None:
        if self._on_event is not None:
            while self.pending_events:
                self._on_event(self.pending_events.pop(0))
        if self._on_lost is not None and self.lost:
            self._on_lost(self.lost)
            self.lost = 0

    def attach_perf_sample(self, fn: str, frequency_hz: int) -> None:
        self.perf_attached.append((fn, frequency_hz))

    def close(self) -> None:
        self.closed = True


class FakeRuntime:
    """Hands out one FakeProgram, or raises the error it was given."""

    def __init__(
        self,
        program: FakeProgram | None = None,
        error: Exception | None = None,
        cost_pct: float = 0.0,
    ) -> None:
        self.program = program or FakeProgram({})
        self.error = error
        self.loaded: list[tuple[str, list[str]]] = []
        self.kernel_fields: list[dict[str, str]] = []  # what each load was told the C reads
        self.cost_pct = cost_pct  # the share of one CPU the fake programs "spend" in the kernel

    def cost_meter(self) -> OverheadMeter:
        start = time.monotonic()

        def read() -> Reading:
            now = time.monotonic()
            busy_ns = int((now - start) * self.cost_pct / 100 * 1e9)
            return Reading(at=now, bpf_ns=busy_ns, runs=busy_ns // 100, cpu_s=0.0)

        return OverheadMeter(read)

    def load(
        self, source: str, cflags: list[str], *, kernel_fields: Mapping[str, str] | None = None
    ) -> tuple[FakeProgram, float, float]:
        self.loaded.append((source, cflags))
        self.kernel_fields.append(dict(kernel_fields or {}))
        if self.error is not None:
            raise self.error
        return self.program, 0.01, 0.002
