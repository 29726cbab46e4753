"""What every result kind provides: its model and the data operations the agent and the
controller both need (merge over hosts, delta between snapshots, bcc-style text)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from node_agent.bounds import WireModel

R = TypeVar("R", bound=WireModel)


@dataclass(frozen=True)
class Kind(Generic[R]):
    model: type[R]
    # Every host's result of one (kind, name), in host order, into the fleet's result(s).
    merge: Callable[[Sequence[tuple[str, R]]], list[R]]
    # What one series did between a cumulative snapshot and the one before (None: absent).
    delta: Callable[[R, R | None], R]
    # The result as the agent's `run` command prints it, without its title line.
    text: Callable[[R], list[str]]
    # The result's title line (its name, plus whatever tells two of one name apart).
    title: Callable[[R], str]
    # What tells this result apart from others of its kind and name in one snapshot.
    series: Callable[[R], Hashable]

    @property
    def key(self) -> str:
        """The `kind` discriminator the model carries on the wire."""
        default = self.model.model_fields["kind"].default
        assert isinstance(default, str)
        return default


def name_only(result: WireModel) -> Hashable:
    name = getattr(result, "name", "")
    assert isinstance(name, str)
    return name


def unchanged(current: R, previous: R | None) -> R:
    """Kinds whose cumulative view is all there is (stacks, samples) pass it on."""
    return current
