"""The HTTP edge on plain calls: bodies, page sizes, the headers of a refusal, what is logged, the catch-all 500."""

from __future__ import annotations

import json
import logging

import pytest

from xboot.errors import BackendUnavailable, BadRequest, ConfigurationError, TooManyRequests, Unauthorized
from xboot.service.http.edge import ApiResponse, error_headers, json_object, page_size, respond


@pytest.mark.parametrize("body", [b"", b"  \r\n"])
def test_an_empty_body_is_named_as_such(body):
    with pytest.raises(BadRequest, match="request body is empty"):
        json_object(body)


@pytest.mark.parametrize(("value", "expected"), [(None, 20), ("1", 1), ("100", 100)])
def test_page_sizes_within_bounds(value, expected):
    assert page_size(value, 20, 100) == expected


@pytest.mark.parametrize("value", ["0", "101", "-1", "ten", "²"])
def test_page_sizes_out_of_bounds(value):
    with pytest.raises(BadRequest, match="limit must be a whole number from 1 to 100"):
        page_size(value, 20, 100)


def test_a_refusal_says_when_to_come_back_and_how_to_authenticate():
    assert error_headers(BadRequest("no")) == {}
    assert error_headers(TooManyRequests("later", retry_after=7)) == {"Retry-After": "7"}
    assert error_headers(Unauthorized("who?")) == {}
    challenged = Unauthorized("who?", challenges=('Basic realm="xboot"', "Bearer"))
    assert error_headers(challenged) == {"WWW-Authenticate": 'Basic realm="xboot", Bearer'}


def _raise(error: Exception):
    def handler() -> ApiResponse:
        raise error

    return handler


def test_every_answer_is_no_store_and_refusals_carry_their_headers():
    ok = respond(lambda: ApiResponse(200, {"fine": True}))
    assert ok.headers["Cache-Control"] == "no-store"
    busy = respond(_raise(BackendUnavailable("store busy", retry_after=3)))
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "3"
    assert busy.headers["Cache-Control"] == "no-store"
    assert json.loads(busy.get_body()) == {"error": "backend_unavailable", "message": "store busy"}


def test_server_side_errors_are_logged_and_client_errors_are_not(caplog):
    caplog.set_level(logging.ERROR, logger="xboot.service.http.edge")
    respond(_raise(BadRequest("your fault")))
    respond(_raise(TooManyRequests("slow down", retry_after=1)))
    assert not caplog.records
    respond(_raise(ConfigurationError("setting Location: nope")))
    respond(_raise(BackendUnavailable("store busy", retry_after=3)))
    assert [r.getMessage() for r in caplog.records] == [
        "configuration_error: setting Location: nope",
        "backend_unavailable: store busy",
    ]


def test_an_unexpected_exception_is_a_bare_500_that_leaks_nothing(caplog):
    caplog.set_level(logging.ERROR, logger="xboot.service.http.edge")
    reply = respond(_raise(RuntimeError("key material 3f9a")))
    assert reply.status_code == 500
    assert json.loads(reply.get_body()) == {"error": "internal_error", "message": "internal error"}
    assert reply.headers["Cache-Control"] == "no-store"
    (record,) = caplog.records
    assert "RuntimeError" in record.getMessage() and "test_edge_rules.py" in record.getMessage()
    assert "3f9a" not in record.getMessage()
