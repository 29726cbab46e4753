"""What the controller asks of a result kind: its section of the CLI's side-by-side job view,
its digest for reports, and the trend metrics it answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, cast

from controller.cli.text import Line
from controller.reports.digest import RunDigest, TableDetail
from node_agent.kinds import Result, kind_of
from node_agent.kinds.base import R

# The trend's answer in one host's results: (value, unit), or None when the kind has no such
# metric; value None when it has the metric but no number for it.
Answer = tuple[float | None, str | None] | None


@dataclass(frozen=True)
class Column:
    """One host's results in the side-by-side view."""

    host: str
    header: str
    results: Sequence[Result]

    def find(self, like: R) -> R | None:
        """This host's result of the kind and name of `like`."""
        kind, name = getattr(like, "kind", None), getattr(like, "name", None)
        found = (r for r in self.results if r.kind == kind and r.name == name)
        return cast("R | None", next(found, None))

    def series(self, like: R) -> R | None:
        """This host's result of the same series as `like` (kind, name, labels, bounds)."""
        kind = kind_of(cast(Result, like))
        want = kind.series(like)
        found = (r for r in self.results if r.kind == kind.key and kind.series(r) == want)
        return cast("R | None", next(found, None))


@dataclass(frozen=True)
class View(Generic[R]):
    # The side-by-side section of merged results (one, or a group: see `grouped`), given each
    # host's column, the row limit and the terminal width.
    section: Callable[[Sequence[R], Sequence[Column], int, int], list[Line]]
    # Adds the result's digest to a run's (reports read digests, never raw results).
    digest: Callable[[R, RunDigest, list[TableDetail]], None]
    # A trend metric (kind "pNN", "count", "total", "rate", "key") over this kind's results of
    # the metric's name in one host's snapshot, and the snapshot's span in seconds.
    metric: Callable[[str, str | None, Sequence[R], float], Answer]
    # Merged results of one name share a section (a histogram's label sets).
    grouped: bool = False


def no_digest(result: R, run: RunDigest, details: list[TableDetail]) -> None:
    """Kinds a report does not read beyond counting them."""


def no_metric(kind: str, key: str | None, results: Sequence[R], span_s: float) -> Answer:
    return None
