"""Linear histograms, as bpftrace's lhist(value, min, max, step) keeps them.

Slot 0 holds values below min, slot i (1..n) holds [min + (i-1)*step, min + i*step), and slot
n+1 holds values at or above max, where n = (max - min) / step. A percentile falling in the
overflow slot is reported as max (the last finite bound, Prometheus's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, model_validator

from node_agent.bounds import MAX_FIELDS, Count, KeyValue, Name
from node_agent.kinds.histogram import LABEL_WIDTH, BucketHistogram, Scale, family_kind

MAX_LINEAR_BUCKETS = 1000  # in-range buckets; with under- and overflow, 1002 slots at most
I64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


@dataclass(frozen=True)
class LinearScale:
    min: int
    max: int
    step: int

    @property
    def buckets(self) -> int:
        """How many in-range buckets (slots 1..n)."""
        return (self.max - self.min) // self.step

    def bounds(self, slot: int) -> tuple[int | None, int | None]:
        if slot == 0:
            return None, self.min - 1
        if slot > self.buckets:
            return self.max, None
        low = self.min + (slot - 1) * self.step
        return low, low + self.step - 1

    def upper(self, slot: int) -> int:
        high = self.bounds(slot)[1]
        return self.max if high is None else high

    def label(self, slot: int) -> str:
        low, high = self.bounds(slot)
        if low is None:
            text = f"(..., {self.min})"
        elif high is None:
            text = f"[{self.max}, ...)"
        else:
            text = f"[{low}, {high + 1})"
        return f"{text:>{LABEL_WIDTH}}"

    def spec(self) -> dict[str, int] | None:
        return {"min": self.min, "max": self.max, "step": self.step}

    def __str__(self) -> str:
        return f"linear({self.min}, {self.max}, {self.step})"


class LinearHistogram(BucketHistogram):
    """A linear histogram (bpftrace's lhist): slot 0 is below min, slot i holds
    [min + (i-1)*step, min + i*step), slot n+1 is at or above max."""

    kind: Literal["linear_histogram"] = "linear_histogram"
    name: Name
    unit: Name
    labels: dict[Name, KeyValue] = Field(default_factory=dict, max_length=MAX_FIELDS)
    min: I64
    max: I64
    step: Annotated[int, Field(ge=1, le=2**63 - 1)]
    buckets: list[tuple[Annotated[int, Field(ge=0, le=MAX_LINEAR_BUCKETS + 1)], Count]] = Field(
        default_factory=list,
        description="(slot, count), sparse: 0 below min, n+1 at or above max",
        max_length=MAX_LINEAR_BUCKETS + 2,
    )

    @model_validator(mode="after")
    def _bounds(self) -> LinearHistogram:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if (self.max - self.min) % self.step:
            raise ValueError(f"max - min ({self.max - self.min}) must be a multiple of step")
        n = (self.max - self.min) // self.step
        if n > MAX_LINEAR_BUCKETS:
            raise ValueError(f"{n} buckets between min and max; at most {MAX_LINEAR_BUCKETS}")
        slots = [s for s, _ in self.buckets]
        if any(s > n + 1 for s in slots):
            raise ValueError(f"bucket slot beyond the overflow slot {n + 1}")
        if len(set(slots)) != len(slots):
            raise ValueError("bucket slots repeat")
        return self

    @property
    def scale(self) -> Scale:
        return LinearScale(self.min, self.max, self.step)


KIND = family_kind(LinearHistogram)
