"""The agent's exceptions: one root, each subclass mapped to a wire error code."""

from __future__ import annotations

from node_agent.protocol import ErrorCode, TraceError, truncate_log


class FleettraceError(Exception):
    """Root of every error the agent reports about a trace."""

    code = ErrorCode.internal

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = truncate_log(detail) if detail else None

    def to_error(self) -> TraceError:
        return TraceError(code=self.code, message=self.message, detail=self.detail)


class UnknownProgram(FleettraceError):
    code = ErrorCode.unknown_program


class BadRequest(FleettraceError):
    code = ErrorCode.bad_request


class BadParameter(FleettraceError):
    """A parameter (or scope field) that fails validation; `field` names it."""

    code = ErrorCode.bad_parameter

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnsupportedProgram(FleettraceError):
    """The host lacks a kernel feature or attach point the program needs."""

    code = ErrorCode.unsupported


class ProgramCompileError(FleettraceError):
    code = ErrorCode.compile_error


class VerifierRejected(FleettraceError):
    code = ErrorCode.verifier_rejected


class AttachError(FleettraceError):
    code = ErrorCode.attach_failed


class LimitExceeded(FleettraceError):
    code = ErrorCode.limit_exceeded


class PolicyViolation(FleettraceError):
    """Work this agent's own policy refuses, whatever the sender was allowed to ask."""

    code = ErrorCode.policy
