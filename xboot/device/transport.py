"""HTTP for the device side: stdlib urllib, bounded retries with Retry-After and jitter, no redirects."""

from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import json
import random
import re
import secrets
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from xboot.device.errors import ClientError, ServerRefused, ServerUnavailable

MAX_RESPONSE_BYTES = 1024 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for 429/502/503/504 and network errors: Retry-After when given, else backoff with jitter."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `retry` (1-based); Retry-After is honoured up to `max_delay`."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class RetryNotice:
    """Passed to `on_retry` before each wait, so a caller can show progress."""

    what: str  # "POST /api/certificate"
    reason: str  # "503 backend_unavailable: ..." or the network error
    attempt: int  # the attempt that failed, 1-based
    attempts: int
    delay: float


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            return None

    def error(self) -> tuple[str | None, str]:
        """The service's `{"error", "message"}`, or a printable start of whatever else it sent."""
        document = self.json()
        if isinstance(document, dict) and ("error" in document or "message" in document):
            return str(document.get("error") or "") or None, str(document.get("message") or "")
        if not self.body.strip():
            return None, "(empty response)"
        kind = self.headers.get("content-type", "no Content-Type").split(";")[0]
        return None, f"the answer is not xboot's JSON ({kind}, {len(self.body)} bytes): is --url the xboot service?"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def split_service_url(url: str) -> tuple[str, str | None]:
    """The app's base URL and any `code` in it.

    Accepts what the Azure portal's "Get Function URL" gives (`https://app/api/certificate?code=...`)
    as well as the bare app URL.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError("--url must be the service's http:// or https:// address, for example http://localhost:7071")
    code = dict(parse_qsl(parts.query)).get("code") or None
    path = parts.path.rstrip("/")
    cut = (path + "/").find("/api/")
    if cut >= 0:
        path = path[:cut]
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), code


def is_loopback_or_https(base_url: str) -> bool:
    """Plain HTTP sends keys in the clear: fine on this machine, not across a network."""
    parts = urlsplit(base_url)
    return parts.scheme == "https" or (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")


def multipart(field_name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """One file field, as `curl --form 'signedReport=@file'` sends it."""
    filename = _UNSAFE_FILENAME.sub("_", filename) or "report.signed"  # it goes into a header
    boundary = "xboot-" + secrets.token_hex(16)
    while boundary.encode() in data:
        boundary = "xboot-" + secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the function key to wherever it points, and turn POST into GET: report it instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Transport:
    """HTTP to one xboot service: keys, bounded retries, size limits, no redirects. Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        function_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url, code_in_url = split_service_url(url)
        self.function_key = function_key or code_in_url
        self.admin_key = admin_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._sleep = sleep
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ssl_context), _NoRedirects)

    # -- transport --

    def _send_once(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        # The scheme was checked in split_service_url: only http and https reach here.
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with self._opener.open(request, timeout=self.timeout) as reply:
                return Response(reply.status, {k.lower(): v for k, v in reply.headers.items()}, self._read(reply))
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, self._read(error))

    @staticmethod
    def _read(reply: Any) -> bytes:
        data = reply.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise ServerUnavailable(f"the service sent more than {MAX_RESPONSE_BYTES // 1024} KiB; refusing to read it")
        return data

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        admin: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One call, retried when the service says "later" or the network failed; 2xx or an exception."""
        what = f"{method} {path}"
        headers = {"Accept": "application/json", "User-Agent": "xboot-client", **(headers or {})}
        if content_type:
            headers["Content-Type"] = content_type
        key = self.admin_key if admin else self.function_key
        if key:
            headers["x-functions-key"] = key
        attempts = max(1, self.retry.attempts)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            code: str | None = None
            retry_after: float | None = None
            try:
                response = self._send_once(method, path, body, headers)
            except urllib.error.URLError as error:
                if isinstance(error.reason, socket.gaierror):  # a name that does not resolve will not start to
                    raise ServerUnavailable(
                        f"{what}: cannot resolve {urlsplit(self.base_url).hostname}: check --url"
                    ) from None
                if isinstance(error.reason, ssl.SSLCertVerificationError):  # not transient: do not retry
                    raise ServerUnavailable(
                        f"{what}: the service's TLS certificate did not verify: {error.reason.verify_message}"
                    ) from None
                reason = f"cannot reach {self.base_url}: {error.reason}"
            except (OSError, http.client.HTTPException) as error:  # timeouts, resets, bad status lines
                reason = f"network error talking to {self.base_url}: {error or type(error).__name__}"
            else:
                if 200 <= response.status < 300:
                    return response
                status = response.status
                if 300 <= status < 400:
                    location = response.headers.get("location", "elsewhere")
                    raise ServerRefused(
                        f"{what}: {status}: the service redirects to {location}; use that URL", status=status
                    )
                code, message = response.error()
                reason = f"{status}{' ' + code if code else ''}: {message}"
                if status not in RETRY_STATUSES:
                    failure = ServerRefused if 400 <= status < 500 else ServerUnavailable
                    raise failure(f"{what}: {reason}", status=status, code=code)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt >= attempts:
                raise ServerUnavailable(
                    f"{what}: {reason} (gave up after {attempts} attempts)", status=status, code=code
                )
            delay = self.retry.delay(attempt, retry_after)
            if self.on_retry is not None:
                self.on_retry(RetryNotice(what, reason, attempt, attempts, delay))
            self._sleep(delay)

    def _json(self, response: Response, what: str) -> Any:
        document = response.json()
        if document is None:
            raise ServerUnavailable(f"{what}: the service answered {response.status} without valid JSON")
        return document

    def _object(self, response: Response, what: str) -> dict[str, Any]:
        document = self._json(response, what)
        if not isinstance(document, dict):
            raise ServerUnavailable(f"{what}: the service did not answer with a JSON object")
        return document

    def _pages(self, path: str, query: dict[str, str], field: str) -> tuple[dict[str, Any], list[Any]]:
        """The first page's document and the `field` items of every page, via continuationToken."""
        first: dict[str, Any] | None = None
        items: list[Any] = []
        token = None
        while True:
            parameters = {**query, **({"continuationToken": token} if token else {})}
            url = f"{path}?{urlencode(parameters)}" if parameters else path
            document = self._object(self.request("GET", url, admin=True), f"GET {path}")
            page = document.get(field)
            if not isinstance(page, list):
                raise ServerUnavailable(f"GET {path}: the answer has no {field} list")
            first = first or document
            items += page
            token = document.get("continuationToken")
            if not token:
                return first, items
