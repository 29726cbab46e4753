"""Query and path parameters shared by routes, each bounded so no value reaches the database
or a datetime unchecked."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from controller.hosts.models import NAME_PATTERN

# Past any table's size (and id), and inside every database's integer (SQLite's is 64-bit, signed).
MAX_OFFSET = 2**31 - 1

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
# A job's uuid, or a schedule's id or name.
IdPath = Annotated[str, Path(min_length=1, max_length=64)]
IdQuery = Annotated[str, Query(min_length=1, max_length=64)]
RowId = Annotated[int, Path(ge=1, le=MAX_OFFSET, description="row id")]
HostPath = Annotated[str, Path(pattern=NAME_PATTERN, description="host name")]
