"""The agent's exceptions: one root, each subclass mapped to a wire error code."""

from __future__ import annotations

from typing import Any, ClassVar

from node_agent.protocol import ErrorCode, TraceError, truncate_log


class FleettraceError(Exception):
    """Root of every error the agent reports about a trace; a subclass names its wire code."""

    code: ClassVar[ErrorCode] = ErrorCode.internal

    def __init_subclass__(cls, *, code: ErrorCode | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = truncate_log(detail) if detail else None

    def to_error(self) -> TraceError:
        return TraceError(code=self.code, message=self.message, detail=self.detail)


class UnknownProgram(FleettraceError, code=ErrorCode.unknown_program):
    """No catalog program by that name."""


class BadRequest(FleettraceError, code=ErrorCode.bad_request):
    """A request the program cannot serve as written (e.g. a custom program's maps)."""


class BadParameter(FleettraceError, code=ErrorCode.bad_parameter):
    """A parameter (or scope field) that fails validation; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnsupportedProgram(FleettraceError, code=ErrorCode.unsupported):
    """The host lacks a kernel feature or attach point the program needs."""


class ProgramCompileError(FleettraceError, code=ErrorCode.compile_error):
    """bcc could not compile the program's C."""


class VerifierRejected(FleettraceError, code=ErrorCode.verifier_rejected):
    """The kernel's verifier refused to load the compiled program."""


class AttachError(FleettraceError, code=ErrorCode.attach_failed):
    """The program loaded but a probe would not attach."""


class LimitExceeded(FleettraceError, code=ErrorCode.limit_exceeded):
    """A request past this agent's limits (duration, overhead budget)."""


class Killed(FleettraceError, code=ErrorCode.killed):
    """A trace's process ended by a signal it did not choose (the OOM killer, an operator)."""


class PolicyViolation(FleettraceError, code=ErrorCode.policy):
    """Work this agent's own policy refuses, whatever the sender was allowed to ask."""
