"""Errors that cross the HTTP edge: each carries its status and a machine-readable code.

Messages are written for the caller: they never include secret values, file contents
or stack traces.
"""

from __future__ import annotations


class XbootError(Exception):
    status = 500
    code = "internal_error"
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(XbootError):
    status = 400
    code = "bad_request"


class Unauthorized(XbootError):
    """No credential, or one that is malformed, badly signed or expired (`authorization_required`,
    `invalid_credential`); `challenges` become WWW-Authenticate headers where the protocol wants them (EST)."""

    status = 401
    code = "authorization_required"

    def __init__(self, message: str, *, code: str | None = None, challenges: tuple[str, ...] = ()) -> None:
        super().__init__(message, code=code)
        self.challenges = challenges


class Forbidden(XbootError):
    status = 403
    code = "forbidden"


class NotFound(XbootError):
    status = 404
    code = "not_found"


class Conflict(XbootError):
    status = 409
    code = "conflict"


class PayloadTooLarge(XbootError):
    status = 413
    code = "payload_too_large"


class Unprocessable(XbootError):
    status = 422
    code = "verification_failed"


class TooManyRequests(XbootError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(XbootError):
    """The service's own settings are wrong; the message names the setting, never its value."""

    status = 500
    code = "configuration_error"


class BackendUnavailable(XbootError):
    """A key store or data store could not be reached; the caller should retry later."""

    status = 503
    code = "backend_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class BadGateway(XbootError):
    """An upstream CA answered with something unusable: an error, a malformed answer, or a certificate
    that fails xboot's checks. Nothing was recorded or returned."""

    status = 502
    code = "upstream_failed"
