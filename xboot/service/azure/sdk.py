"""What every Azure SDK client here shares: one credential, bounded retries, and error mapping.

Imported only by the modules of Azure-backed locations and stores, so a File deployment
never loads azure-core or azure-identity.

Retries happen inside the SDK pipeline and are bounded, because a device is waiting on
the other end: at most `RETRY_TOTAL` retries, backoff 0.5 s, 1 s, 2 s (capped at
`BACKOFF_MAX`), a server's Retry-After honoured only up to `MAX_RETRY_AFTER`, and
`TOTAL_TIMEOUT` for the whole call. Beyond that the device gets a 503 with Retry-After.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Hashable
from typing import Any, NoReturn

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import RetryPolicy, SansIOHTTPPolicy

from xboot.errors import BackendUnavailable, ConfigurationError
from xboot.service import deadline

RETRY_TOTAL = 3
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 4.0
MAX_RETRY_AFTER = 4  # seconds a throttled call may wait in-process; a longer Retry-After goes to the device
TOTAL_TIMEOUT = 20  # seconds for one SDK call, retries included (Key Vault; Blob is bounded by its retries)
CONNECTION_TIMEOUT = 5
READ_TIMEOUT = 10
DEFAULT_RETRY_AFTER = 5  # what the device is told when the backend gave no Retry-After

_credential_lock = threading.Lock()
_credential: Any = None
_clients_lock = threading.Lock()
_clients: dict[Hashable, Any] = {}


def credential() -> Any:
    """One DefaultAzureCredential per process: it caches tokens, so it must be reused."""
    global _credential
    with _credential_lock:
        if _credential is None:
            from azure.identity import DefaultAzureCredential

            _credential = DefaultAzureCredential()
        return _credential


def forget_clients() -> None:
    """Drop the credential and every client (a forked worker must not share their connections)."""
    global _credential
    with _credential_lock, _clients_lock:
        _credential = None
        _clients.clear()


def shared_client(key: Hashable, create: Callable[[], Any]) -> Any:
    """One SDK client per endpoint for the process: it holds the connection pool (and, with it, the token)."""
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = create()
        return client


def backoff_seconds(retry: int) -> float:
    """Exponential backoff with ±20% jitter for the `retry`-th retry (1-based), capped at BACKOFF_MAX."""
    return min(BACKOFF_MAX, BACKOFF_FACTOR * 2 ** (retry - 1)) * random.uniform(0.8, 1.2)


class DeadlinePolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Per attempt: connect and read timeouts cut to what is left of the request's deadline; none left, no attempt."""

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        if deadline.passed():
            raise ServiceRequestError("the request's deadline has passed")
        request.context.options["connection_timeout"] = deadline.cap(CONNECTION_TIMEOUT)
        request.context.options["read_timeout"] = deadline.cap(READ_TIMEOUT)


class BoundedRetry(RetryPolicy):
    """azure-core's RetryPolicy for Key Vault, with two changes that keep a device's wait bounded.

    A Retry-After longer than MAX_RETRY_AFTER is not slept through: the 429 is returned at once
    and its Retry-After reaches the device. POST is retried too: the only POST made here is the
    Key Vault sign operation, which has no side effect.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("retry_total", RETRY_TOTAL)
        kwargs.setdefault("retry_backoff_factor", BACKOFF_FACTOR)
        kwargs.setdefault("retry_backoff_max", BACKOFF_MAX)
        kwargs.setdefault("timeout", TOTAL_TIMEOUT)
        super().__init__(**kwargs)
        self._method_whitelist = frozenset([*self._method_whitelist, "POST"])

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings = dict(super().configure_retries(options))
        settings["timeout"] = deadline.cap(settings["timeout"])  # azure-core's absolute timeout for the call
        return settings

    def increment(self, settings: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        return bool(super().increment(settings, *args, **kwargs)) and not deadline.passed()

    def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return False
        return bool(super().is_retry(settings, response))


def client_options(retry_policy: Any = None) -> dict[str, Any]:
    """Keyword arguments for every SDK client; tests wrap this to add a transport.

    Key Vault clients use BoundedRetry; Blob passes its own storage retry policy (the storage
    SDK ignores azure-core's retry settings and would otherwise wait 15 s before its first retry).
    """
    return {
        "retry_policy": retry_policy if retry_policy is not None else BoundedRetry(),
        "connection_timeout": CONNECTION_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
    }


def _retry_after(error: HttpResponseError) -> int:
    response = getattr(error, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(1, min(int(header), 300)) if header else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER


def raise_backend_error(error: Exception, service: str, setting: str, what: str, role: str) -> NoReturn:
    """Map an SDK error to what the device and the operator should see: 503 if transient, else a config error.

    `role` names the Azure RBAC role that grants the access that was refused.
    """
    if isinstance(error, ResourceNotFoundError):
        raise ConfigurationError(f"setting {setting}: {what} does not exist in {service}") from None
    if isinstance(error, ClientAuthenticationError):
        raise ConfigurationError(
            f"{service}: authentication failed; check the managed identity or credential used for {setting}"
        ) from None
    if isinstance(error, HttpResponseError) and error.status_code in (401, 403):
        raise ConfigurationError(
            f"{service}: access to {what} (setting {setting}) was denied; grant the app's identity {role}"
        ) from None
    if isinstance(error, HttpResponseError) and (error.status_code == 429 or (error.status_code or 0) >= 500):
        raise BackendUnavailable(
            f"{service} is busy or failing; retry later", retry_after=_retry_after(error)
        ) from None
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        raise BackendUnavailable(f"{service} is unreachable; retry later", retry_after=DEFAULT_RETRY_AFTER) from None
    if isinstance(error, HttpResponseError):
        raise ConfigurationError(f"{service}: request for {what} (setting {setting}) failed") from None
    raise error
