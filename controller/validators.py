"""Checks the API's request schemas share: fields given together or not at all."""

from __future__ import annotations

from pydantic import BaseModel


def _given(model: BaseModel, names: tuple[str, ...]) -> int:
    """How many of the fields are given: not None, and not False for a flag."""
    values = [getattr(model, name) for name in names]
    return sum(value is not None and value is not False for value in values)


def _choice(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def exactly_one(model: BaseModel, *names: str) -> None:
    if _given(model, names) != 1:
        raise ValueError(f"give exactly one of {_choice(names)}")


def at_most_one(model: BaseModel, *names: str) -> None:
    if _given(model, names) > 1:
        raise ValueError(f"give at most one of {_choice(names)}")
