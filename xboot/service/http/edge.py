"""The HTTP edge: request bodies in, JSON responses out, errors as `{"error", "message"}`.

Handlers in function_app.py call `respond`, which turns an `ApiResponse` or an
`XbootError` into an HttpResponse and any other exception into a bare 500 that
says nothing about the code.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from xboot.errors import BadRequest, ConfigurationError, PayloadTooLarge, Unauthorized, XbootError
from xboot.service.deadline import DEFAULT_SECONDS as DEFAULT_DEADLINE
from xboot.service.deadline import SETTING as DEADLINE_SETTING
from xboot.service.deadline import request_deadline
from xboot.service.settings import Settings
from xboot.service.untrusted import parse_json, whole_number

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def check_size(body: bytes) -> bytes:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES // 1024} KiB")
    return body


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type said (XBoot.Client sends none)."""
    check_size(body)
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object", code="invalid_json")
    try:
        value = parse_json(body)
    except ValueError as error:
        raise BadRequest(f"request body is not valid UTF-8 JSON: {_reason(error)}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return value


def _reason(error: ValueError) -> str:
    """Why a body did not parse, without echoing it (json's messages quote positions, not content)."""
    return "not UTF-8" if isinstance(error, UnicodeDecodeError) else str(error).split(":")[0]


def field_ci(document: Mapping[str, Any], name: str) -> Any:
    """Look a key up case-insensitively, as ASP.NET model binding did for XBoot."""
    wanted = name.lower()
    for key, value in document.items():
        if key.lower() == wanted:
            return value
    return None


def page_size(value: str | None, default: int, maximum: int) -> int:
    """The `limit` query parameter of a listing."""
    if value is None:
        return default
    number = whole_number(value)
    if number is None or not 1 <= number <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", code="invalid_query")
    return number


def query_time(name: str, value: str | None) -> dt.datetime | None:
    """A time query parameter: ISO 8601 (`2026-12-01`, `2026-12-01T08:00:00Z`), UTC when no offset is given."""
    if value is None:
        return None
    try:
        if len(value) > 40:
            raise ValueError
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time, e.g. 2026-12-01T08:00:00Z",
                         code="invalid_query") from None  # fmt: skip
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def error_body(error: XbootError) -> dict[str, str]:
    return {"error": error.code, "message": error.message}


def error_headers(error: XbootError) -> dict[str, str]:
    """What a refusal tells the client beyond its body: when to come back, and how to authenticate."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized) and error.challenges:
        headers["WWW-Authenticate"] = ", ".join(error.challenges)
    return headers


def _encode(response: ApiResponse) -> bytes:
    if isinstance(response.body, bytes):
        return response.body
    return json.dumps(response.body).encode("utf-8")  # no indent: it forces json's pure-Python encoder


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _deadline_seconds() -> int:
    try:
        return Settings.from_environ().integer(DEADLINE_SETTING, DEFAULT_DEADLINE, minimum=1, maximum=230)
    except ConfigurationError:
        return DEFAULT_DEADLINE  # a bad value must not stop requests; the setting's own check reports it


def respond(handler: Callable[[], ApiResponse]) -> func.HttpResponse:
    try:
        with request_deadline(_deadline_seconds()):
            response = handler()
    except XbootError as error:
        if error.status >= 500:
            log.error("%s: %s", error.code, error.message)
        response = ApiResponse(error.status, error_body(error), error_headers(error))
    except Exception as exc:  # noqa: BLE001 - the edge: nothing escapes as a stack trace
        # Type and place only: exception text can carry request or key material.
        log.error("unexpected %s at %s", type(exc).__name__, _where(exc))
        response = ApiResponse(500, {"error": "internal_error", "message": "internal error"})
    return func.HttpResponse(
        body=_encode(response),
        status_code=response.status,
        headers={"Cache-Control": "no-store", **response.headers},
        mimetype=response.content_type,
    )
