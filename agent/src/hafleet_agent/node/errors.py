"""The errors of the node's verbs; the HTTP API answers each with its ``status`` and
``{"error": message}`` (plus ``extra`` fields)."""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """An error the API answers with ``status`` and ``{"error": message}``."""

    status = 500

    def __init__(self, message: str, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra


class NoLeader(AgentError):
    status = 503


class Unknown(AgentError):
    status = 504


class NotFound(AgentError):
    status = 404


class BadRequest(AgentError):
    status = 400


class StateErrorResult(AgentError):
    """A command that applied with an error (a CAS conflict, a bad field)."""

    def __init__(self, error: dict[str, Any] | None) -> None:
        error = error or {"status": 500, "message": "unknown error"}
        super().__init__(str(error.get("message")), status=int(error.get("status", 500)))
        self.body = error
