"""The CLI's one error type."""

from __future__ import annotations


class CliError(Exception):
    """Bad input or a refused request: one line on stderr, exit code 2 (or 1 for failures)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
