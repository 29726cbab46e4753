"""Log2 histograms (bcc's BPF_HISTOGRAM with bpf_log2l, bpftrace's hist()): slot s holds values
in [2**(s-1), 2**s - 1]; slot 1 holds 0 and 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from node_agent.bounds import MAX_BUCKETS, MAX_FIELDS, Count, KeyValue, Name
from node_agent.kinds.histogram import BucketHistogram, Scale, family_kind


def slot_bounds(slot: int) -> tuple[int, int]:
    """The value range of a bcc log2 slot, as bcc's print_log2_hist shows it."""
    low = (1 << slot) >> 1
    high = (1 << slot) - 1
    if low == high:
        low -= 1
    return max(low, 0), high


@dataclass(frozen=True)
class Log2Scale:
    def bounds(self, slot: int) -> tuple[int | None, int | None]:
        return slot_bounds(slot)

    def upper(self, slot: int) -> int:
        return slot_bounds(slot)[1]

    def label(self, slot: int) -> str:
        low, high = slot_bounds(slot)
        return f"{low:>10} -> {high:<10}"

    def spec(self) -> dict[str, int] | None:
        return None

    def __str__(self) -> str:
        return "log2"


LOG2: Scale = Log2Scale()


class Log2Histogram(BucketHistogram):
    """A log2 histogram: slot s holds values in [2**(s-1), 2**s - 1]; slot 1 holds 0 and 1."""

    kind: Literal["log2_histogram"] = "log2_histogram"
    name: Name
    unit: Name
    labels: dict[Name, KeyValue] = Field(default_factory=dict, max_length=MAX_FIELDS)
    buckets: list[tuple[Annotated[int, Field(ge=0, lt=MAX_BUCKETS)], Count]] = Field(
        default_factory=list, description="(slot, count), sparse", max_length=MAX_BUCKETS
    )

    @property
    def scale(self) -> Scale:
        return LOG2


KIND = family_kind(Log2Histogram)
