"""Bounds on everything an agent sends, and the field types that carry them.

A traced host controls these values and the controller stores them (SQLite and PostgreSQL
integers are signed 64-bit; seq is a 32-bit column). The protocol and every result kind
build their models from here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from node_agent.wire import HOST_NAME_PATTERN

MAX_SEQ = 2**31 - 1
MAX_COUNT = 2**64 - 1  # u64 kernel counters
MAX_ID = 128  # run and job ids
MAX_NAME = 128  # result, field, label and program names
MAX_TEXT = 4096  # one key value (a path: PATH_MAX), one frame, one reason
MAX_ROWS = 100_000  # Limits.max_rows's bound
MAX_SAMPLES = 10_000  # Limits.max_samples's bound
MAX_STACK_DEPTH = 1024  # bcc gives at most 127 kernel + 127 user frames
MAX_BUCKETS = 128
MAX_FIELDS = 32
MAX_RUNNING = 1024
# An agent's own cost and record (its heartbeat's `agent`): far above any real value.
MAX_BYTES = 2**50  # 1 PiB of memory
MAX_CPU_S = 1e12  # 30,000 years of one CPU
MAX_TOTAL = 2**53  # traces ever run: still exact as a float (Prometheus, JavaScript)
MAX_LAST_ERROR = 500
# The names the API accepts for hosts: an envelope from any host it lets in must be readable.
HOST_PATTERN = HOST_NAME_PATTERN


def clip(text: str) -> str:
    """Text cut to MAX_TEXT, saying so."""
    if len(text) > MAX_TEXT:
        mark = " [... cut]"
        return text[: MAX_TEXT - len(mark)] + mark
    return text


def _clip(value: Any) -> Any:
    """Free text an agent writes (reasons, messages, probe errors) is cut, not refused."""
    return clip(value) if isinstance(value, str) else value


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Signed = Annotated[int, Field(ge=-(2**63), le=MAX_COUNT)]  # a sum or min of signed values
Clipped = Annotated[str, BeforeValidator(_clip), Field(max_length=MAX_TEXT)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
HostName = Annotated[str, Field(pattern=HOST_PATTERN)]
KeyValue = Annotated[str, Field(max_length=MAX_TEXT)] | Signed


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


def first_error(exc: ValidationError, within: str = "") -> str:
    """A validation error's first problem in one line: `where: what`, without the input;
    `within` names the field the validated value came from."""
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in (within, *error["loc"]) if part) or "data"
    return f"{where}: {error['msg']}"
