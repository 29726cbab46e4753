"""What the runner and decoders need from a loaded eBPF program, and nothing more."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from node_agent.overhead import OverheadMeter

EventCallback = Callable[[Any], None]


class LoadedProgram(Protocol):
    """A compiled, loaded and attached program whose maps can be read."""

    def items(self, table: str) -> list[tuple[Any, Any]]:
        """Key/value pairs of a map; per-CPU values are summed into one."""

    def stack(self, table: str, stack_id: int) -> list[int]:
        """Instruction addresses of one stack, innermost first."""

    def symbolize(self, addr: int, pid: int | None) -> str:
        """Name of a user address in pid, or of a kernel address when pid is None."""

    def open_events(
        self, table: str, on_event: EventCallback, on_lost: Callable[[int], None]
    ) -> None:
        """Start delivering a perf output's events to on_event (decoded structs)."""

    def poll_events(self, timeout_ms: int) -> None:
        """Deliver pending events; returns after timeout_ms when there are none."""

    def attach_perf_sample(self, fn: str, frequency_hz: int) -> None:
        """Run fn on a CPU-clock software event on every CPU at frequency_hz."""

    def close(self) -> None:
        """Detach and unload everything; idempotent."""


class Runtime(Protocol):
    def load(
        self, source: str, cflags: list[str], *, kernel_fields: Mapping[str, str] | None = None
    ) -> tuple[LoadedProgram, float, float]:
        """Compile, load and auto-attach; returns the program, compile and attach seconds.

        `kernel_fields`: the struct members the program reads (C define -> "struct.member"),
        which a runtime whose headers may lay structs out wrongly defines from the kernel."""

    def cost_meter(self) -> OverheadMeter:
        """Starts measuring what the loaded programs cost the host (after attach)."""
