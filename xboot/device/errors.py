"""What the device side raises: messages safe to show, never keys or passwords."""

from __future__ import annotations


class ClientError(Exception):
    """Something went wrong on this side: a file, an argument, a key."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ServerRefused(ClientError):
    """The service answered 4xx: retrying the same request will not help."""


class ServerUnavailable(ClientError):
    """The service failed (5xx, 429) or could not be reached, after the retries allowed."""


class VerificationFailed(ClientError):
    """The service answered, but what it sent does not match our key or does not chain."""
