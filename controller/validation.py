"""Rules the API's schemas share."""

from __future__ import annotations

from pydantic import BaseModel


def exactly_one(model: BaseModel, *fields: str) -> None:
    """Refuse (ValueError, a 422) unless exactly one of `fields` is given: not None, not False."""
    given = [name for name in fields if getattr(model, name) not in (None, False)]
    if len(given) != 1:
        *rest, last = fields
        raise ValueError(f"give exactly one of {', '.join(rest)} or {last}")
