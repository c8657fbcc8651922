"""HTTP to an upstream CA: TLS as configured, one deadline, bounded retries, bounded answers.

Standard library only (http.client), one kept-alive connection per thread and upstream. A request is
retried when the connection was refused or dropped before any answer, or the upstream answered
502/503/504; a read that times out is not retried. Either way nothing is recorded or returned here
unless an answer passes every check, so the worst a retry can cost is a certificate for the device's
own key that the upstream made and nobody received. Every attempt's timeout is cut to what is left of
the request's deadline (`RequestDeadlineSeconds`).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from xboot.errors import BackendUnavailable, BadGateway, ConfigurationError
from xboot.service import deadline
from xboot.service.settings import Settings

log = logging.getLogger(__name__)

URL = "IssuerUrl"
TIMEOUT = "IssuerTimeoutSeconds"
TLS_CA = "IssuerTlsCaFile"
CLIENT_CERTIFICATE = "IssuerClientCertificateFile"
CLIENT_KEY = "IssuerClientKeyFile"
SETTINGS = (URL, TIMEOUT, TLS_CA, CLIENT_CERTIFICATE, CLIENT_KEY)

ATTEMPTS = 3
BACKOFF_SECONDS = 0.2
MAX_ANSWER_BYTES = 256 * 1024  # a certificate chain is a few KB; more is not an answer
RETRY_AFTER_SECONDS = 10
_RETRIED_STATUSES = (502, 503, 504)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    """Where the upstream is and how to reach it; made once per settings (see `endpoint`)."""

    issuer: str
    scheme: str
    host: str
    port: int
    path: str  # the URL's path without a trailing slash
    timeout: float
    context: ssl.SSLContext | None
    identity: tuple[str | None, ...]  # the settings it was made from: kept-alive connections follow them

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        """One request, retried as the module docstring says; 503 (with Retry-After) when it cannot be made."""
        for attempt in range(1, ATTEMPTS + 1):
            if deadline.passed():
                break
            try:
                answer = self._attempt(method, self.path + path, body, headers or {})
            except TimeoutError:
                raise BackendUnavailable(
                    f"the upstream CA (Issuer {self.issuer}) did not answer in time",
                    code="upstream_unavailable",
                    retry_after=RETRY_AFTER_SECONDS,
                ) from None
            except ssl.SSLCertVerificationError:
                raise BadGateway(
                    f"the upstream CA's TLS certificate is not trusted (Issuer {self.issuer}; see {TLS_CA})",
                    code="upstream_tls_untrusted",
                ) from None
            except (OSError, http.client.HTTPException) as error:
                log.warning("upstream %s: attempt %d: %s", self.issuer, attempt, type(error).__name__)
            else:
                if answer.status not in _RETRIED_STATUSES:
                    return answer
                log.warning("upstream %s: attempt %d: HTTP %d", self.issuer, attempt, answer.status)
            pause = BACKOFF_SECONDS * attempt
            if attempt == ATTEMPTS or deadline.passed(pause):
                break
            time.sleep(pause)
        raise BackendUnavailable(
            f"the upstream CA (Issuer {self.issuer}) is unavailable",
            code="upstream_unavailable",
            retry_after=RETRY_AFTER_SECONDS,
        )

    def _attempt(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        connection, reused = _connection(self)
        try:
            try:
                response = self._send(connection, method, target, body, headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the upstream closed a kept-alive connection while it was idle: nothing was processed
                _drop(self)
                connection, _ = _connection(self)
                response = self._send(connection, method, target, body, headers)
            data = response.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise BadGateway(f"the upstream CA (Issuer {self.issuer}) answered with too much data")
            return Answer(response.status, data)  # after Connection: close, http.client reconnects by itself
        except BaseException:
            _drop(self)
            raise

    def _send(
        self, connection: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
        headers: dict[str, str],
    ) -> http.client.HTTPResponse:  # fmt: skip
        connection.timeout = deadline.cap(self.timeout)
        if connection.sock is not None:  # a kept-alive connection: this request's deadline, not the last one's
            connection.sock.settimeout(connection.timeout)
        connection.request(method, target, body=body, headers=headers)
        return connection.getresponse()


_local = threading.local()


def _connection(endpoint: Endpoint) -> tuple[http.client.HTTPConnection, bool]:
    pool: dict[Endpoint, http.client.HTTPConnection] = _local.__dict__.setdefault("pool", {})
    connection = pool.get(endpoint)
    if connection is not None:
        return connection, True
    timeout = deadline.cap(endpoint.timeout)
    if endpoint.scheme == "https":
        connection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=timeout, context=endpoint.context
        )
    else:
        connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    pool[endpoint] = connection
    return connection, False


def clear_connections() -> None:
    """Forget every endpoint and this thread's kept-alive connections (tests start from nothing)."""
    with _endpoints_lock:
        _endpoints.clear()
    for connection in _local.__dict__.pop("pool", {}).values():
        connection.close()


def _drop(endpoint: Endpoint) -> None:
    pool: dict[Endpoint, http.client.HTTPConnection] = _local.__dict__["pool"]
    pool.pop(endpoint).close()  # every caller holds a pooled connection


def _context(settings: Settings, issuer: str) -> ssl.SSLContext:
    tls_ca = settings.get(TLS_CA)
    for name in (TLS_CA, CLIENT_CERTIFICATE, CLIENT_KEY):
        path = settings.get(name)
        if path is not None and not Path(path).is_file():
            raise ConfigurationError(f"setting {name}: no such file")
    try:
        context = ssl.create_default_context(cafile=tls_ca)
    except (ssl.SSLError, ValueError):
        raise ConfigurationError(f"setting {TLS_CA}: not a PEM bundle of CA certificates") from None
    certificate, key = settings.get(CLIENT_CERTIFICATE), settings.get(CLIENT_KEY)
    if (certificate is None) != (key is None):
        raise ConfigurationError(f"settings {CLIENT_CERTIFICATE} and {CLIENT_KEY} go together (Issuer {issuer})")
    if certificate is not None:
        try:
            context.load_cert_chain(certificate, key)
        except (ssl.SSLError, ValueError):
            raise ConfigurationError(
                f"settings {CLIENT_CERTIFICATE} and {CLIENT_KEY}: not a PEM certificate and its unencrypted key"
            ) from None
    return context


_endpoints: dict[tuple[str | None, ...], Endpoint] = {}
_endpoints_lock = threading.Lock()


def endpoint(settings: Settings, issuer: str) -> Endpoint:
    """The upstream at `IssuerUrl`, with its TLS context built once per distinct settings."""
    cache_key = (issuer, *settings.snapshot(SETTINGS))
    found = _endpoints.get(cache_key)
    if found is not None:
        return found
    url = settings.require(URL, f"for Issuer {issuer} (the upstream CA's base URL)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(f"setting {URL} must be an http:// or https:// URL without query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"setting {URL}: no credentials in the URL (use the Issuer credential settings)")
    timeout = settings.integer(TIMEOUT, 5, minimum=1, maximum=120)
    if parts.scheme == "http" and (settings.get(CLIENT_CERTIFICATE) or settings.get(TLS_CA)):
        raise ConfigurationError(f"setting {URL} is http://, but TLS settings are given: use https://")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigurationError(f"setting {URL}: invalid port") from None
    context = _context(settings, issuer) if parts.scheme == "https" else None
    made = Endpoint(
        issuer, parts.scheme, parts.hostname, port, parts.path.rstrip("/"), float(timeout), context, cache_key
    )
    with _endpoints_lock:
        if len(_endpoints) > 16:
            _endpoints.clear()
        _endpoints[cache_key] = made
    return made
