"""The one error type the CLI turns into a single line and a non-zero exit, without a traceback."""
from __future__ import annotations

from typing import Optional


class AgentError(Exception):
    """An expected failure: the message says what is wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str, errno_value: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno_value = errno_value


class UsageError(AgentError):
    """Bad flags or configuration values."""

    exit_code = 2
